"""Mixed precision keeps fp32 where it promises: the flow loss's latents (targets), timesteps and noise
stay fp32 under DDP and FSDP2 when the forward computes in bf16 (2 gloo processes, no Ray; bf16 on CPU
stands in for the GPU's bf16)."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vgt.train.distributed import WorkerEnv

WORLD = 2


def _record_flow_loss(seen: dict):
    """Wrap `vgt.ar.model.flow_loss` so every call records what the loss receives and feeds its head."""
    from vgt.ar import model as ar_model

    real = ar_model.flow_loss

    def spy(head, x1, cond, generator, **kw):
        seen["x1_dtype"], seen["x1"] = str(x1.dtype), x1.detach().double().tolist()
        forward = head.forward

        def head_spy(x_t, t, c, **hkw):
            seen["t_dtype"], seen["x_t_dtype"], seen["cond_dtype"] = str(t.dtype), str(x_t.dtype), str(c.dtype)
            return forward(x_t, t, c, **hkw)

        head.forward = head_spy
        try:
            loss, repa = real(head, x1, cond, generator, **kw)
        finally:
            del head.forward
        seen["loss_dtype"] = str(loss.dtype)
        return loss, repa

    ar_model.flow_loss = spy


def _worker(rank: int, store: str, out: str) -> None:
    from vgt.ar.model import VGTModel, tokens_of
    from vgt.presets import get_preset
    from vgt.train.distributed import distribute

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        cfg = get_preset("tiny")
        results, seen = {}, {}
        _record_flow_loss(seen)
        for strategy in ("ddp", "fsdp2"):
            torch.manual_seed(0)
            model = VGTModel(cfg.ar, latent_dim=cfg.ae.latent_channels).train()
            env = WorkerEnv(rank, WORLD, torch.device("cpu"), strategy, compute_dtype=torch.bfloat16)
            wrapped = distribute(model, env, list(model.llm.model.layers))
            # latents that bf16 cannot hold: any rounding on the way to the loss shows
            latents = torch.randn(2, cfg.ae.latent_channels, 2, 2, generator=torch.Generator().manual_seed(rank))
            latents = latents + 1e-4
            seen.clear()
            with env.autocast():
                out_ = wrapped(["a red square", "two blue circles"], latents=latents,
                               generator=torch.Generator().manual_seed(1))
            out_["loss"].backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            seen["grads_finite"] = all(torch.isfinite(g.full_tensor() if hasattr(g, "full_tensor") else g).all()
                                       for g in grads)
            seen["expected_x1"] = tokens_of(latents).reshape(-1, cfg.ae.latent_channels).double().tolist()
            results[strategy] = dict(seen)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)  # 2 spawned processes import torch + transformers: ~20-60 s on 2 busy cores
def test_flow_loss_inputs_stay_fp32_under_ddp_and_fsdp2_bf16(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        with open(tmp_path / f"rank{rank}.json") as f:
            results = json.load(f)
        for strategy, seen in results.items():
            where = f"{strategy} rank {rank}"
            assert seen["x1_dtype"] == "torch.float32", where  # FSDP2 used to hand the loss bf16 latents
            assert seen["x1"] == seen["expected_x1"], where  # the given latents, bit for bit
            assert seen["t_dtype"] == "torch.float32" and seen["loss_dtype"] == "torch.float32", where
            assert seen["cond_dtype"] == "torch.bfloat16", where  # the backbone did compute in bf16
            assert seen["grads_finite"], where


@pytest.mark.timeout(30)
def test_compute_dtype_defaults_follow_the_device():
    assert WorkerEnv().compute_dtype == torch.float32 and not WorkerEnv().mixed_precision
    assert WorkerEnv(device=torch.device("cuda", 0)).compute_dtype == torch.bfloat16
    with WorkerEnv(compute_dtype=torch.bfloat16).autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
