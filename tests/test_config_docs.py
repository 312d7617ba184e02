"""Every config field carries its doc, and `vgt config PRESET` prints each resolved key with it (no Ray)."""
from __future__ import annotations

import dataclasses
import json
from typing import get_type_hints

import pytest

from pipelines.train.config import PREFIX, RayTrainConfig, ray_train_config
from ray_jobs.cli import main
from vgt.config import VGTConfig, describe, field_docs, flat_keys, to_dict
from vgt.presets import get_preset


def config_classes(cls: type) -> list[type]:
    """`cls` and every dataclass reachable through its fields' type hints."""
    found = [cls]
    for hint in get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint) and hint not in found:
            found += [c for c in config_classes(hint) if c not in found]
    return found


ALL_CLASSES = config_classes(VGTConfig) + [RayTrainConfig]


def test_the_walk_reaches_every_section():
    names = {c.__name__ for c in ALL_CLASSES}
    assert {"VGTConfig", "AEConfig", "BackboneConfig", "DecoderConfig", "ARConfig", "FlowHeadConfig", "DataConfig",
            "TrainConfig", "AEStageConfig", "ARStageConfig", "PerceptualConfig", "SampleConfig",
            "RayTrainConfig"} <= names


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_doc(cls):
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name, "").strip()]
    assert not missing, (f"{cls.__name__} fields without a doc: {missing}; put a one- or two-line attribute "
                         f"docstring right after each field")


def test_field_docs_reads_attribute_docstrings_and_metadata():
    @dataclasses.dataclass
    class Example:
        a: int = 1
        """The a.
        Two lines."""
        b: int = 2  # a comment is not a doc
        c: int = dataclasses.field(default=3, metadata={"doc": "From metadata."})

    assert field_docs(Example) == {"a": "The a. Two lines.", "b": "", "c": "From metadata."}


def test_describe_lists_every_leaf_with_value_and_doc():
    cfg = get_preset("demo")
    rows = describe(cfg)
    assert [k for k, _, _ in rows] == flat_keys(cfg)
    by_key = {k: (v, d) for k, v, d in rows}
    assert by_key["sample.guidance_scale"] == (cfg.sample.guidance_scale, field_docs(type(cfg.sample))["guidance_scale"])
    assert all(d for _, _, d in rows)


def listing(out: str) -> dict[str, tuple[str, str]]:
    """`key = value` lines and the indented doc lines after each -> {key: (value text, doc)}."""
    entries, key = {}, None
    for line in out.splitlines():
        if line.startswith("    ") and key is not None:
            value, doc = entries[key]
            entries[key] = (value, f"{doc} {line.strip()}".strip())
        elif " = " in line and not line.startswith(("#", "[")):
            key, value = line.split(" = ", 1)
            entries[key] = (value, "")
        else:
            key = None
    return entries


def test_vgt_config_prints_every_key_with_its_doc(capsys):
    assert main(["config", "demo"]) == 0
    entries = listing(capsys.readouterr().out)
    cfg = get_preset("demo")
    expected = {k: d for k, _, d in describe(cfg)}
    expected.update({PREFIX + k: d for k, _, d in describe(RayTrainConfig())})
    assert set(expected) <= set(entries)
    for key, doc in expected.items():
        assert entries[key][1] == doc, key
    assert entries["sample.guidance_scale"][0] == json.dumps(cfg.sample.guidance_scale)
    assert entries["ray.num_workers"][0] == "1"


def test_vgt_config_applies_model_and_ray_overrides(capsys):
    assert main(["config", "demo", "--set", "sample.guidance_scale=7", "ray.num_workers=2"]) == 0
    entries = listing(capsys.readouterr().out)
    assert entries["sample.guidance_scale"][0] == "7.0"
    assert entries["ray.num_workers"][0] == "2"


def test_vgt_config_json_is_the_resolved_config(capsys):
    assert main(["config", "demo", "--json", "--set", "sample.guidance_scale=7", "ray.num_workers=2"]) == 0
    data = json.loads(capsys.readouterr().out)
    ray = data.pop("ray")
    assert data == to_dict(get_preset("demo", ["sample.guidance_scale=7"]))
    assert ray == to_dict(ray_train_config(["num_workers=2"]))
    assert data["sample"]["guidance_scale"] == 7


@pytest.mark.parametrize("override, nearest", [("sample.guidance=7", "sample.guidance_scale"),
                                               ("ray.num_worker=2", "num_workers")])
def test_vgt_config_unknown_key_is_one_line_naming_the_nearest(capsys, override, nearest):
    assert main(["config", "demo", "--set", override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"did you mean {nearest!r}" in lines[0], lines
