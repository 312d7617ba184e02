"""Reference (hustvl/VGT) AE checkpoints -> vgt AE folders."""
import math

import pytest
import torch
from torch.nn import functional as F

from ray_jobs.cli import main as cli
from vgt.config import apply_overrides
from vgt.convert.reference import TEACHER, map_reference_ae
from vgt.presets import get_preset

from reference_layouts import reference_ae_layout, reference_key_list


def meta_ae(preset: str):
    from vgt.ae import VGTAutoencoder

    cfg = apply_overrides(get_preset(preset), ["ae.backbone.pretrained=null", "ae.decoder.pretrained=null"])
    with torch.device("meta"):
        return VGTAutoencoder(cfg.ae)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preset,layout,family", [("internvl3-1b", "internvl3", "internvl"),
                                                  ("qwen25vl-3b", "qwen25vl", "qwen2_5_vl")])
def test_complete_reference_key_list_maps_without_gaps(preset, layout, family):
    """The reference's own AE key list (derived from its module definitions) fills our AE exactly."""
    target = {k: tuple(v.shape) for k, v in meta_ae(preset).state_dict().items()}
    keys = reference_key_list("reference_ae_keys.json", layout)
    mapped, report = map_reference_ae({k: torch.empty(s, device="meta") for k, s in keys.items()}, family, set(target))
    assert report.unmapped == [] and report.missing == []
    teacher = [k for k in keys if k.startswith(("teacher.", "teacher_mlp1."))]
    assert report.dropped == teacher and (family == "qwen2_5_vl" or len(teacher) > 0)
    if teacher:
        assert f"dropped {len(teacher)}: {TEACHER}" in report.summary()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == target


@pytest.mark.timeout(60)
def test_split_qkv_reproduces_the_fused_reference_attention():
    """InternViT computes one fused qkv projection; our q/k/v projections must give the same output."""
    from transformers import InternVLVisionConfig
    from transformers.models.internvl.modeling_internvl import InternVLVisionAttention

    dim, heads, tokens = 64, 4, 10
    g = torch.Generator().manual_seed(0)
    qkv_w, qkv_b = torch.randn(3 * dim, dim, generator=g) / 8, torch.randn(3 * dim, generator=g)
    proj_w, proj_b = torch.randn(dim, dim, generator=g) / 8, torch.randn(dim, generator=g)
    x = torch.randn(2, tokens, dim, generator=g)

    # the reference's fused computation: qkv -> reshape(B, N, 3, H, d) -> softmax attention -> proj
    qkv = F.linear(x, qkv_w, qkv_b).reshape(2, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1) @ v
    expected = F.linear(attn.transpose(1, 2).reshape(2, tokens, dim), proj_w, proj_b)

    ref = {"encoder.encoder.layers.0.attn.qkv.weight": qkv_w, "encoder.encoder.layers.0.attn.qkv.bias": qkv_b,
           "encoder.encoder.layers.0.attn.proj.weight": proj_w, "encoder.encoder.layers.0.attn.proj.bias": proj_b}
    prefix = "encoder.vision_tower.encoder.layer.0.attention."
    names = [f"{p}.{s}" for p in ("q_proj", "k_proj", "v_proj", "projection_layer") for s in ("weight", "bias")]
    mapped, report = map_reference_ae(ref, "internvl", {prefix + n for n in names})
    assert report.ok
    cfg = InternVLVisionConfig(hidden_size=dim, num_attention_heads=heads, attention_bias=True)
    cfg._attn_implementation = "eager"
    layer = InternVLVisionAttention(cfg).eval()
    layer.load_state_dict({k.removeprefix(prefix): v for k, v in mapped.items()})
    torch.testing.assert_close(layer(x)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.timeout(60)
def test_cli_converts_a_reference_file_into_an_equivalent_ae(tmp_path):
    from vgt.ae import VGTAutoencoder

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    ae = VGTAutoencoder(cfg.ae).eval()
    ref = reference_ae_layout(ae.state_dict())
    ref.update({f"teacher.{k}": v for k, v in ref.items() if k.startswith("encoder.")})
    torch.save({"model": ref}, tmp_path / "vgt_ae_internvl3.pth")

    assert cli(["convert", "--from", "reference", "--in", str(tmp_path / "vgt_ae_internvl3.pth"),
                "--out", str(tmp_path / "ae"), "--preset", "tiny"]) == 0
    loaded = VGTAutoencoder.from_pretrained(str(tmp_path / "ae"))
    pixels = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(pixels), ae.encode(pixels))
        assert torch.equal(loaded.decode(ae.encode(pixels)), ae.decode(ae.encode(pixels)))


@pytest.mark.timeout(60)
def test_cli_refuses_checkpoints_with_unplaced_keys(tmp_path, capsys):
    from vgt.ae import VGTAutoencoder

    ref = reference_ae_layout(VGTAutoencoder(get_preset("tiny").ae).state_dict())
    ref["encoder.encoder.layers.0.attn.mystery"] = torch.zeros(3)
    del ref["down_mlp.3.bias"]
    torch.save(ref, tmp_path / "bad.pth")
    assert cli(["convert", "--from", "reference", "--in", str(tmp_path / "bad.pth"), "--out",
                str(tmp_path / "ae"), "--preset", "tiny"]) == 1  # refused: nothing written
    err = capsys.readouterr().err
    assert "unmapped encoder.encoder.layers.0.attn.mystery" in err and "missing down_mlp.3.bias" in err
    assert not (tmp_path / "ae").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert cli(["convert", "--from", "reference", "--in", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "x")]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_pth_state_dicts_become_safetensors_files(tmp_path):
    from safetensors.torch import load_file

    state = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.randn(4)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "vgg16.pth")
    out = tmp_path / "vgg16.safetensors"
    assert cli(["convert", "--from", "pth", "--in", str(tmp_path / "vgg16.pth"), "--out", str(out)]) == 0
    loaded = load_file(out)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
