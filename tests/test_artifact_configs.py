"""Component and pipeline folders rebuild exactly what was trained (docs/artifacts.md §2.1).

Folders carry the full transformers / diffusers config of every backbone as it was loaded, bind it to
the weights, and refuse a config.json that disagrees with its weights, naming the field. Folders
written before that (the presets' hand-written subset, nothing bound) still load, with a note.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from test_ar import single_thread  # noqa: F401 (autouse)
from vgt import VGTPipeline
from vgt.ae import VGTAutoencoder
from vgt.ar.model import VGTModel
from vgt.artifacts import (BOUND_CONFIG, CONFIG_FILE, WEIGHTS_FILE, ArtifactError, check_same_backbone,
                           fingerprint)
from vgt.backbones import load_tokenizer, random_vlm
from vgt.config import to_dict
from vgt.presets import get_preset

PRESETS = ["tiny", "tiny-qwen"]


def _ae(preset: str = "tiny", seed: int = 0, **backbone) -> VGTAutoencoder:
    torch.manual_seed(seed)
    cfg = get_preset(preset).ae
    cfg.backbone = dataclasses.replace(cfg.backbone, **backbone)
    return VGTAutoencoder(cfg).eval()


def _ar(preset: str = "tiny", seed: int = 0, **ar) -> VGTModel:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(get_preset(preset).ar, **ar)
    model = VGTModel(cfg).eval()
    for p in model.head.parameters():  # the zero-initialised head would hide differences
        torch.nn.init.normal_(p, std=0.1)
    return model


def _saved(folder) -> dict:
    return json.loads((folder / CONFIG_FILE).read_text())


def _header_config(folder) -> dict | None:
    data = (folder / WEIGHTS_FILE).read_bytes()
    size = int.from_bytes(data[:8], "little")
    bound = json.loads(data[8:8 + size]).get("__metadata__", {}).get(BOUND_CONFIG)
    return None if bound is None else json.loads(bound)


def _edit(folder, path: str, value, header: bool = False) -> None:
    """Set `config.<path>` in config.json (and, with `header`, in the config bound to the weights too)."""
    meta = _saved(folder)
    _set(meta["config"], path, value)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    if header:
        data = (folder / WEIGHTS_FILE).read_bytes()
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + size])["__metadata__"]
        bound = json.loads(metadata[BOUND_CONFIG])
        _set(bound, path, value)
        metadata[BOUND_CONFIG] = json.dumps(bound, sort_keys=True)
        (folder / WEIGHTS_FILE).write_bytes(st_save(st_load(data), metadata=metadata))


DROP = object()  # _edit's value that removes the field


def _set(config: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        config = config[key]
    if value is DROP:
        del config[last]
    else:
        config[last] = value


def _write_old_format(folder, kind: str, config: dict, state_dict: dict) -> None:
    """A component folder as vgt wrote it before this change: the hand-written config, nothing bound."""
    folder.mkdir(parents=True)
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    fp = fingerprint(tensors)
    (folder / WEIGHTS_FILE).write_bytes(st_save(tensors, metadata={"format_version": "1", "fingerprint": fp,
                                                                   "kind": kind}))
    (folder / CONFIG_FILE).write_text(json.dumps({"format_version": 1, "kind": kind, "fingerprint": fp,
                                                  "config": config}))


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- round trips keep the full configs -------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("preset", PRESETS)
def test_ae_folder_keeps_every_backbone_config_as_loaded(preset, tmp_path):
    ae = _ae(preset)
    ae.save_pretrained(str(tmp_path / "ae"))
    saved = _saved(tmp_path / "ae")["config"]
    hf, dc = saved["backbone"]["hf_config"], saved["decoder"]["dc_config"]
    assert hf["vision_config"] == json.loads(json.dumps(ae.encoder.tower.config.to_dict()))
    # transformers' full to_dict(), not the preset's hand-written subset
    assert {"transformers_version", "model_type"} <= set(hf)
    hand_written = get_preset(preset).ae.backbone.hf_config["vision_config"]
    assert {"initializer_range", "model_type"} <= set(hf["vision_config"]) - set(hand_written)
    # every AutoencoderDC argument, defaults included
    assert dc["_class_name"] == "AutoencoderDC"
    assert {"scaling_factor", "decoder_conv_act_fn", "encoder_block_types"} <= set(dc)
    assert _header_config(tmp_path / "ae") == saved  # bound to the weights
    loaded = VGTAutoencoder.from_pretrained(str(tmp_path / "ae"))
    assert loaded.config == ae.config and loaded.portable_config() == saved
    with torch.no_grad():
        assert torch.equal(loaded(_pixels()), ae(_pixels()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preset", PRESETS)
def test_ar_folder_keeps_the_llm_config_as_built_and_truncated(preset, tmp_path):
    model = _ar(preset, llm_num_layers=1)
    model.save_pretrained(str(tmp_path / "ar"))
    saved = _saved(tmp_path / "ar")["config"]
    text = saved["ar"]["backbone"]["hf_config"]["text_config"]
    assert text == json.loads(json.dumps(model.llm.model.config.to_dict()))
    assert text["num_hidden_layers"] == 1 and len(text["layer_types"]) == 1  # what was kept, not the preset's 2
    assert "rope_parameters" in text and "rms_norm_eps" in text
    loaded = VGTModel.from_pretrained(str(tmp_path / "ar"))
    assert loaded.config == model.config and loaded.llm.num_layers == 1
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(90)
def test_pretrained_backbones_are_recorded_as_loaded_not_as_the_preset_wrote_them(tmp_path):
    """A checkpoint whose config differs from the preset's numbers in fields that leave no trace in the
    tensors (eps, rope theta, activation): the folder records the checkpoint's, and loading it offline
    rebuilds those, not the preset's."""
    cfg = get_preset("tiny")
    hf = copy.deepcopy(cfg.ar.backbone.hf_config)
    hf["text_config"].update(rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    hf["vision_config"].update(layer_norm_eps=1e-5, hidden_act="gelu_pytorch_tanh")
    torch.manual_seed(0)
    random_vlm(dataclasses.replace(cfg.ar.backbone, hf_config=hf)).save_pretrained(tmp_path / "hub")
    ae = _ae("tiny", pretrained=str(tmp_path / "hub"))  # preset hf_config still says 1e-6, gelu, theta 1e4
    model = _ar("tiny", backbone=dataclasses.replace(cfg.ar.backbone, pretrained=str(tmp_path / "hub")))
    ae.save_pretrained(str(tmp_path / "ae"))
    model.save_pretrained(str(tmp_path / "ar"))
    for f in (tmp_path / "hub").iterdir():
        f.unlink()  # offline: nothing refers to the checkpoint any more
    vision = _saved(tmp_path / "ae")["config"]["backbone"]["hf_config"]["vision_config"]
    text = _saved(tmp_path / "ar")["config"]["ar"]["backbone"]["hf_config"]["text_config"]
    assert (vision["layer_norm_eps"], vision["hidden_act"]) == (1e-5, "gelu_pytorch_tanh")
    assert (text["rms_norm_eps"], text["rope_parameters"]["rope_theta"]) == (1e-5, 5e5)
    ae2 = VGTAutoencoder.from_pretrained(str(tmp_path / "ae"))
    ar2 = VGTModel.from_pretrained(str(tmp_path / "ar"))
    assert ae2.encoder.tower.encoder.layer[0].layernorm_before.eps == 1e-5
    assert ar2.llm.model.norm.variance_epsilon == 1e-5
    assert ar2.llm.model.rotary_emb.config.rope_parameters["rope_theta"] == 5e5
    with torch.no_grad():
        assert torch.equal(ae2.encode(_pixels()), ae.encode(_pixels()))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("preset", PRESETS)
def test_pipeline_index_holds_the_components_configs(preset, tmp_path):
    torch.manual_seed(0)
    pipe = VGTPipeline.from_config(get_preset(preset))
    pipe.save_pretrained(str(tmp_path / "pipe"))
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())["config"]
    assert index["ae"] == _saved(tmp_path / "pipe" / "ae")["config"]
    assert index["ar"] == _saved(tmp_path / "pipe" / "ar")["config"]["ar"]
    assert "initializer_range" in index["ar"]["backbone"]["hf_config"]["text_config"]
    loaded = VGTPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert loaded.config.ae == loaded.autoencoder.config and loaded.config.ar == loaded.model.config
    assert to_dict(loaded.config) == index


@pytest.mark.timeout(120)
def test_converted_folders_carry_the_full_configs(tmp_path, capsys):
    """`vgt convert`: the AE of a reference checkpoint, and an AR checkpoint whose --base VLM has its own
    eps and rope theta: the pipeline records the base's LLM config, not the preset's."""
    from ray_jobs.cli import main as cli
    from reference_layouts import reference_ae_layout, reference_ar_layout

    cfg = get_preset("tiny")
    hf = copy.deepcopy(cfg.ar.backbone.hf_config)
    hf["text_config"].update(rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    random_vlm(dataclasses.replace(cfg.ar.backbone, hf_config=hf)).save_pretrained(tmp_path / "base")
    load_tokenizer(cfg.ar.backbone).save_pretrained(tmp_path / "base")
    ae, model = _ae("tiny"), _ar("tiny")
    state = {f"module.{k}": v for k, v in reference_ar_layout(model.state_dict(), "internvl").items()}
    state.update({f"module.vgt_ae.{k}": v for k, v in reference_ae_layout(ae.state_dict()).items()})
    torch.save({"state_dict": state}, tmp_path / "iter_1.pth")
    assert cli(["convert", "--from", "reference", "--in", str(tmp_path / "iter_1.pth"), "--base",
                str(tmp_path / "base"), "--preset", "tiny", "--out", str(tmp_path / "pipe")]) == 0
    capsys.readouterr()
    text = _saved(tmp_path / "pipe" / "ar")["config"]["ar"]["backbone"]["hf_config"]["text_config"]
    assert (text["rms_norm_eps"], text["rope_parameters"]["rope_theta"]) == (1e-5, 5e5)
    saved_ae = _saved(tmp_path / "pipe" / "ae")["config"]
    assert "initializer_range" in saved_ae["backbone"]["hf_config"]["vision_config"]
    assert "scaling_factor" in saved_ae["decoder"]["dc_config"]
    pipe = VGTPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert pipe.model.llm.model.norm.variance_epsilon == 1e-5


# -- a config that disagrees with its weights fails, naming the field --------------------------------
TAMPERED = [  # (component, dotted path under config, new value): fields that leave no trace in the tensors
    ("ae", "backbone.hf_config.vision_config.layer_norm_eps", 1e-5),
    ("ae", "backbone.hf_config.vision_config.hidden_act", "silu"),
    ("ae", "decoder.dc_config.decoder_act_fns", "relu"),
    ("ar", "ar.backbone.hf_config.text_config.rms_norm_eps", 1e-5),
    ("ar", "ar.backbone.hf_config.text_config.hidden_act", "gelu"),
    ("ar", "ar.backbone.hf_config.text_config.rope_parameters.rope_theta", 5e5),
    ("ar", "ar.backbone.hf_config.text_config.rope_parameters", {"rope_type": "linear", "factor": 2.0,
                                                                 "rope_theta": 1e4}),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind,path,value", TAMPERED, ids=[p.rpartition(".")[2] for _, p, _ in TAMPERED])
def test_an_edited_config_field_fails_with_its_name(kind, path, value, tmp_path):
    folder = tmp_path / kind
    (_ae() if kind == "ae" else _ar()).save_pretrained(str(folder))
    _edit(folder, path, value)
    cls = VGTAutoencoder if kind == "ae" else VGTModel
    with pytest.raises(ArtifactError, match=rf"(?s)not the config its weights were written with.*config\.{path}"):
        cls.from_pretrained(str(folder))


@pytest.mark.timeout(60)
def test_a_shape_field_names_the_tensor_and_the_field_that_sizes_it(tmp_path):
    _ae().save_pretrained(str(tmp_path / "ae"))
    _edit(tmp_path / "ae", "backbone.hf_config.vision_config.intermediate_size", 48)
    with pytest.raises(ArtifactError) as err:
        VGTAutoencoder.from_pretrained(str(tmp_path / "ae"))
    msg = str(err.value)
    assert "weights do not fit the model its config builds" in msg
    assert ("encoder.vision_tower.encoder.layer.0.mlp.fc1.weight: the weights hold [64, 32], the config builds "
            "[48, 32] (sized by ") in msg
    assert "config.backbone.hf_config.vision_config.intermediate_size = 48" in msg
    assert "the weights fit config.backbone.hf_config.vision_config.intermediate_size = 64 (config.json has 48)" in msg
    # the config the weights were written with says which field was edited
    assert "config.backbone.hf_config.vision_config.intermediate_size = 64 then, 48 now" in msg


@pytest.mark.timeout(60)
def test_a_layer_count_names_the_unexpected_tensors_and_the_count(tmp_path):
    _ar().save_pretrained(str(tmp_path / "ar"))
    meta = _saved(tmp_path / "ar")
    text = meta["config"]["ar"]["backbone"]["hf_config"]["text_config"]
    text.update(num_hidden_layers=1, layer_types=text["layer_types"][:1])
    (tmp_path / "ar" / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"(?s)Unexpected in the weights.*llm\.model\.layers\.1\..*their number "
                       r"follows config\.ar\.backbone\.hf_config\.text_config\.num_hidden_layers = 1.*the weights fit "
                       r"config\.ar\.backbone\.hf_config\.text_config\.num_hidden_layers = 2"):
        VGTModel.from_pretrained(str(tmp_path / "ar"))


@pytest.mark.timeout(60)
def test_a_field_transformers_does_not_rebuild_as_stored_is_named(tmp_path):
    """config.json and the weights agree, but Qwen2 ignores sliding_window unless use_sliding_window: the
    model built would not be the model described, so loading refuses."""
    _ar().save_pretrained(str(tmp_path / "ar"))
    _edit(tmp_path / "ar", "ar.backbone.hf_config.text_config.sliding_window", 4096, header=True)
    with pytest.raises(ArtifactError, match=r"(?s)does not have that config.*config\.ar\.backbone\.hf_config\."
                                            r"text_config\.sliding_window = 4096 in config\.json, None built"):
        VGTModel.from_pretrained(str(tmp_path / "ar"))


@pytest.mark.timeout(60)
def test_a_field_added_after_the_folder_was_written_takes_its_default(tmp_path, caplog):
    """A folder written before a vgt config field existed (absent from config.json and the header)
    loads, with that field's default and a note; the same field stored with another value still
    has to be rebuilt as stored (the test above)."""
    model = _ar()
    model.save_pretrained(str(tmp_path / "ar"))
    _edit(tmp_path / "ar", "ar.train_order", DROP, header=True)
    assert "train_order" not in _saved(tmp_path / "ar")["config"]["ar"]
    with caplog.at_level(logging.INFO, logger="vgt.artifacts"):
        loaded = VGTModel.from_pretrained(str(tmp_path / "ar"))
    assert loaded.config.train_order == "random"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert "config.ar.train_order = (absent) in config.json, 'random' built" in caplog.text


# -- folders written before this change --------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("preset", PRESETS)
def test_old_format_folders_load_with_a_note(preset, tmp_path, caplog):
    ae, model = _ae(preset), _ar(preset)
    old_ae = to_dict(get_preset(preset).ae)  # the hand-written subset, as portable_config() wrote it before
    old_ar = {"ar": to_dict(get_preset(preset).ar), "latent_dim": 32}
    old_ar["ar"]["backbone"]["hf_config"]["text_config"]["sliding_window"] = 4096  # hand-written, unused by Qwen2
    _write_old_format(tmp_path / "ae", "ae", old_ae, ae.state_dict())
    _write_old_format(tmp_path / "ar", "ar", old_ar, model.state_dict())
    with caplog.at_level(logging.INFO, logger="vgt.artifacts"):
        ae2 = VGTAutoencoder.from_pretrained(str(tmp_path / "ae"))
        ar2 = VGTModel.from_pretrained(str(tmp_path / "ar"))
    notes = [r.getMessage() for r in caplog.records]
    assert sum("was written before vgt bound the full backbone configs" in n for n in notes) == 2
    assert any("text_config.sliding_window = 4096 in config.json, None built" in n for n in notes)
    with torch.no_grad():
        assert torch.equal(ae2(_pixels()), ae(_pixels()))
    a, b = model.state_dict(), ar2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # re-saved, the folder records the full configs
    ae2.save_pretrained(str(tmp_path / "ae-new"))
    assert "initializer_range" in _saved(tmp_path / "ae-new")["config"]["backbone"]["hf_config"]["text_config"]


@pytest.mark.timeout(60)
def test_an_old_format_folder_that_does_not_fit_names_the_field(tmp_path):
    old = to_dict(get_preset("tiny").ae)
    old["backbone"]["hf_config"]["vision_config"]["intermediate_size"] = 48
    _write_old_format(tmp_path / "ae", "ae", old, _ae().state_dict())
    with pytest.raises(ArtifactError, match=r"(?s)fc1\.weight: the weights hold \[64, 32\], the config builds "
                                            r"\[48, 32\].*the weights fit config\.backbone\.hf_config\.vision_config"
                                            r"\.intermediate_size = 64"):
        VGTAutoencoder.from_pretrained(str(tmp_path / "ae"))


@pytest.mark.timeout(30)
def test_init_weights_from_another_backbone_config_are_refused():
    """`vgt train-ar --init`: the preset builds the model; a folder trained with another eps is refused."""
    built = _ar().config.backbone.hf_config
    stored = copy.deepcopy(built)
    stored["text_config"]["rms_norm_eps"] = 1e-5
    stored["_name_or_path"] = "/elsewhere/InternVL3-1B-hf"  # where the checkpoint came from does not matter
    check_same_backbone("--init x", {**built, "_name_or_path": "hub"}, built, "ar.backbone.hf_config")
    with pytest.raises(ArtifactError, match=r"(?s)--init x was trained with another backbone config.*ar\.backbone"
                                            r"\.hf_config\.text_config\.rms_norm_eps = 1e-05 in the folder"):
        check_same_backbone("--init x", stored, built, "ar.backbone.hf_config")
