"""Shapes benchmark: vocabulary and held-out split, renderer, detector, scorer, WebDataset shards."""
from __future__ import annotations

import io
import itertools
import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vgt.eval.shapes import ObjectSpec, PromptSpec, caption, detect, eval_prompts, heldout, render, train_specs
from vgt.eval.shapes.dataset import shard_sizes, write_shard
from vgt.eval.shapes.render import layout
from vgt.eval.shapes.score import score_images, summarize
from vgt.eval.shapes.vocab import BACKGROUND, COLOURS, COUNTS, POSITIONS, SHAPES


def single(colour, shape, count, position):
    return PromptSpec((ObjectSpec(colour, shape, count),), position)


def test_captions_read_as_english():
    assert caption(single("red", "circle", 2, "left")) == "two red circles on the left"
    assert caption(single("blue", "triangle", 1, "top")) == "a blue triangle at the top"
    assert caption(single("green", "square", 3, "bottom")) == "three green squares at the bottom"
    assert caption(PromptSpec((ObjectSpec("red", "circle"), ObjectSpec("blue", "square")))) == \
        "a red circle and a blue square"


def test_bad_specs_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="unknown shapes attribute"):
        single("pink", "circle", 1, "left")
    with pytest.raises(ValueError, match="needs a position"):
        single("red", "circle", 1, "middle")
    with pytest.raises(ValueError, match="different colours and shapes"):
        PromptSpec((ObjectSpec("red", "circle"), ObjectSpec("red", "square")))


def test_heldout_split_is_fixed_disjoint_and_covers_every_pair():
    held, train = eval_prompts(), train_specs()
    # 5 colours x 3 shapes x 3 counts x 4 positions = 180 single combinations, one in five held out;
    # 60 two-object pairs (different colours and shapes), 12 held out.
    assert sum(s.kind == "single" for s in held) == 36 and sum(s.kind == "two" for s in held) == 12
    assert len(train) == 180 + 60 - 48
    assert not set(held) & set(train) and all(heldout(s) for s in held)
    # every held-out single combination has all its attribute pairs seen in training
    seen = set()
    for s in train:
        if s.kind == "single":
            o = s.objects[0]
            attrs = [("c", o.colour), ("s", o.shape), ("n", o.count), ("p", s.position)]
            seen |= set(itertools.combinations(attrs, 2))
    for s in held:
        if s.kind == "single":
            o = s.objects[0]
            attrs = [("c", o.colour), ("s", o.shape), ("n", o.count), ("p", s.position)]
            assert set(itertools.combinations(attrs, 2)) <= seen, caption(s)


def test_render_is_deterministic_and_places_objects_in_their_half():
    spec = single("purple", "square", 3, "right")
    a, b = render(spec, 7), render(spec, 7)
    assert a.size == (112, 112) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(render(spec, 8)))
    for position, n in itertools.product(POSITIONS, COUNTS):
        for x, y, size in layout(n, position, 448, np.random.default_rng(n)):
            lo, hi = (x - size / 2, x + size / 2) if position in ("left", "right") else (y - size / 2, y + size / 2)
            assert (hi <= 224) if position in ("left", "top") else (lo >= 224)


def test_detector_on_hand_drawn_shapes():
    img = np.full((100, 100, 3), BACKGROUND, dtype=np.uint8)
    img[10:30, 60:80] = COLOURS["red"]  # a 20x20 square; pixel centres average to (70.0, 20.0)
    for r in range(20):  # a triangle, apex up: row r spans 2r+1 pixels, rows 50..69
        img[50 + r, 30 - r:31 + r] = COLOURS["blue"]
    found = {d.colour: d for d in detect(img)}
    assert set(found) == {"red", "blue"}
    red, blue = found["red"], found["blue"]
    assert (red.shape, red.x, red.y, red.area, red.fill) == ("square", 0.7, 0.2, 0.04, 1.0)
    assert blue.shape == "triangle" and blue.area == 400 / 10000
    assert blue.fill == pytest.approx(400 / (39 * 20))
    assert blue.x == pytest.approx(30.5 / 100) and blue.y == pytest.approx((sum((2 * r + 1) * (50 + r) for r in range(20)) / 400 + 0.5) / 100)


def test_detector_scores_ground_truth_high_even_blurred():
    specs = [s for s in eval_prompts() for _ in range(2)]
    images = [render(s, i) for i, s in enumerate(specs)]
    for imgs in (images, [im.filter(ImageFilter.GaussianBlur(1.5)) for im in images]):
        summary = summarize(score_images(specs, imgs))
        for task in ("colour", "count", "shape", "position", "two_object", "single_all", "overall"):
            assert summary[task] >= 0.95, (task, summary[task])
    assert summary["n_images"] == 96 and len(summary["per_prompt"]) == 48


def test_detector_scores_shuffled_captions_low():
    specs = [s for s in eval_prompts() for _ in range(2)]
    images = [render(s, i) for i, s in enumerate(specs)]
    order = list(range(len(specs)))
    random.Random(0).shuffle(order)
    summary = summarize(score_images([specs[i] for i in order], images))
    assert summary["overall"] < 0.4 and summary["single_all"] < 0.1 and summary["two_object"] < 0.2


def test_blank_image_scores_zero():
    blank = Image.new("RGB", (112, 112), BACKGROUND)
    spec = single("red", "circle", 1, "left")
    record = score_images([spec], [blank])[0]
    assert record["detections"] == [] and not any(record[k] for k in ("colour", "count", "shape", "position"))


def test_webdataset_shards_are_deterministic_and_hold_out_combinations(tmp_path):
    import webdataset as wds

    a = write_shard(str(tmp_path / "a"), 3, 20, seed=5)
    b = write_shard(str(tmp_path / "b"), 3, 20, seed=5)
    assert a.endswith("shapes-train-00003.tar") and open(a, "rb").read() == open(b, "rb").read()
    samples = list(wds.WebDataset(a, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"train-00003-{i:05d}" for i in range(20)]
    for s in samples:
        spec = PromptSpec.from_dict(json.loads(s["json"]))
        assert s["txt"].decode() == caption(spec) and not heldout(spec)
        assert Image.open(io.BytesIO(s["png"])).size == (112, 112)
    held = write_shard(str(tmp_path / "a"), 0, 10, seed=5, split="heldout")
    assert all(heldout(PromptSpec.from_dict(json.loads(s["json"]))) for s in wds.WebDataset(held, shardshuffle=False))
    assert shard_sizes(1050, 500) == [500, 500, 50]


def test_attribute_swaps_change_exactly_one_word():
    from vgt.eval.shapes.reliance import ATTRIBUTES, swap_attribute

    rng = np.random.default_rng(0)
    spec = single("red", "circle", 2, "left")
    for attribute in ATTRIBUTES:
        for _ in range(10):
            words, swapped = caption(spec).split(), caption(swap_attribute(spec, attribute, rng)).split()
            changed = [i for i, (a, b) in enumerate(zip(words, swapped)) if a != b]
            assert len(words) == len(swapped)
            # a count swap may change the noun's number too ("two red circles" -> "a red circle"), a
            # position swap its preposition ("on the left" -> "at the top")
            allowed = {"count": ([0], [0, 2]), "colour": ([1],), "shape": ([2],), "position": ([5], [3, 5])}
            assert changed in allowed[attribute], (words, swapped)
    with pytest.raises(ValueError, match="single-kind"):
        swap_attribute(PromptSpec((ObjectSpec("red", "circle"), ObjectSpec("blue", "square"))), "colour", rng)


@pytest.mark.timeout(60)
def test_word_reliance_is_one_for_a_model_blind_to_words():
    """A model whose token embeddings are all zero sees the same input for every caption of the same
    length: each swap costs exactly nothing. The random model it came from does react to words (once
    its zero-initialised (adaLN-zero) layers are randomised: at initialisation the head ignores its
    condition)."""
    import torch

    from vgt.eval.shapes.reliance import ATTRIBUTES, word_reliance
    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    torch.manual_seed(0)
    model = VGTPipeline.from_config(get_preset("tiny")).model
    specs = [single(c, s, n, p) for c, s, n, p in [("red", "circle", 2, "left"), ("blue", "square", 1, "top"),
                                                   ("green", "triangle", 3, "bottom"), ("yellow", "circle", 1, "right")]]
    captions = [caption(s) for s in specs] + ["a red circle and a blue square"]
    latents = torch.randn(len(captions), model.latent_dim, 4, 4)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    model.train()
    seeing = word_reliance(model, latents, captions)
    assert seeing["rows"] == 4 and model.config.cfg_dropout == 0.1 and model.training  # restored
    assert all(seeing[a] != 1.0 for a in ATTRIBUTES), seeing
    with torch.no_grad():
        model.llm.model.embed_tokens.weight.zero_()
    blind = word_reliance(model, latents, captions)
    assert all(blind[a] == 1.0 for a in ATTRIBUTES), blind
