"""AE throughput: encoding as `vgt prep-latents --bf16` does (fp32 weights, bf16 autocast on CUDA, the
float16 latents copied back to the host) and decoding as Serve's decoder replicas do (bf16 weights on a
GPU). Needs diffusers (the DC-AE decoder); without it the section says so and is skipped."""
from __future__ import annotations

import torch

from .context import Check

REPEATS = 3


def diffusers_missing() -> str | None:
    """Why the AE cannot be built here (diffusers absent, or present but not importing), else None."""
    try:
        import diffusers  # noqa: F401
    except ImportError as err:
        return f"diffusers does not import ({err}): AE encode/decode skipped"
    return None


def run_autoencoder(check: Check) -> dict:
    from vgt.ae.model import VGTAutoencoder  # imports diffusers
    from vgt.data.encode import encode_pixels

    torch.manual_seed(0)
    with check.device:
        ae = VGTAutoencoder(check.cfg.ae)
    ae = ae.to(check.device).eval()
    size, batch = check.cfg.data.resolution, check.ae_batch
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(batch, 3, size, size, generator=g) * 2 - 1  # on the host, as prep-latents reads them
    encode_dtype = check.compute_dtype if check.cuda else torch.float32  # encode_pixels autocasts on CUDA only
    encode_attention = ae.use_attention(check.device, encode_dtype)
    check.reset_peak()
    latents = {}

    def encode():
        latents["z"] = encode_pixels(ae, pixels, bf16=True)

    enc_s = check.seconds(encode, repeats=REPEATS)
    enc_peak = check.peak_gib()
    z = torch.from_numpy(latents["z"]).float()
    decode_dtype = check.compute_dtype if check.cuda else torch.float32  # Serve: bf16 weights on a GPU
    ae = ae.to(decode_dtype)
    ae.use_attention(check.device, decode_dtype)
    check.reset_peak()
    with torch.no_grad():
        dec_s = check.seconds(lambda: ae.decode(z.to(check.device, decode_dtype)), repeats=REPEATS)
    out = {"batch": batch, "resolution": size, "latent_shape": list(z.shape[1:]),
           "encode": {"images_per_s": batch / enc_s, "seconds": enc_s, "compute": str(encode_dtype),
                      "attention": encode_attention, "peak_gib": enc_peak},
           "decode": {"images_per_s": batch / dec_s, "seconds": dec_s, "weights": str(decode_dtype),
                      "peak_gib": check.peak_gib()},
           "params": {"encoder": sum(p.numel() for p in ae.encoder.parameters()),
                      "decoder": sum(p.numel() for p in ae.decoder.parameters())}}
    check.row("AE encode (prep-latents path)", f"batch {batch}, {size} px -> {list(z.shape[1:])}, "
              f"{str(encode_dtype).removeprefix('torch.')}, {encode_attention}",
              round(batch / enc_s, 1), "images/s")
    check.row("AE decode", f"batch {batch}, {list(z.shape[1:])} -> {size} px, "
              f"{str(decode_dtype).removeprefix('torch.')} weights", round(batch / dec_s, 1), "images/s")
    del ae
    return out
