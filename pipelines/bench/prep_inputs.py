"""Deterministic, photo-like raw inputs for `vgt bench prep`: the size and format mix of real
image-text shards (LAION/COYO/DataComp as img2dataset writes them), cached on disk.

Each image is a smooth field with a natural 1/f amplitude spectrum (drawn at a quarter of the size,
then upsampled), a few sharp-edged shapes and fine grain, so JPEG/PNG sizes, decode costs and the
resize's antialiasing meet edges and texture as in photos. Shorter side log-uniform in 400-2000 px,
landscape and portrait aspects; 85 % JPEG (quality 90, about 1.8 bits per pixel as photos are; one
in ten with an EXIF orientation), 15 % PNG (graphics-like, without grain; half of them RGBA with a
soft alpha). Image i depends only on (seed, i): any count is a prefix
of a longer run's images.
"""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np

ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 2.0)
MIN_SIDE, MAX_SIDE = 400, 2000
PNG_SHARE, ALPHA_SHARE_OF_PNG, EXIF_SHARE_OF_JPEG = 0.15, 0.5, 0.1
JPEG_QUALITY = 90


def photo_like(index: int, seed: int = 0, side_range: tuple[int, int] = (MIN_SIDE, MAX_SIDE)) -> tuple[str, bytes]:
    """(extension, encoded bytes) of image `index`: "jpg" or "png", as described above."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    lo, hi = side_range
    short = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    long = int(round(short * ASPECTS[rng.integers(len(ASPECTS))]))
    w, h = (long, short) if rng.random() < 0.7 else (short, long)
    img = Image.fromarray(_smooth_field(rng, (max(8, h // 4), max(8, w // 4)))).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # sharp edges at full resolution
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    buf = io.BytesIO()
    if rng.random() < PNG_SHARE:  # graphics-like: no grain (it would triple the PNG's size)
        if rng.random() < ALPHA_SHARE_OF_PNG:
            alpha = _smooth_field(rng, (max(8, h // 16), max(8, w // 16)))[..., 0]
            img.putalpha(Image.fromarray(alpha).resize((w, h), Image.Resampling.BILINEAR))
        img.save(buf, "PNG", compress_level=3)
        return "png", buf.getvalue()
    arr = np.asarray(img).astype(np.int16)
    arr += rng.integers(-1, 2, arr.shape, dtype=np.int16)  # sensor grain
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if rng.random() < EXIF_SHARE_OF_JPEG:
        exif[0x0112] = int(rng.integers(2, 9))  # 2-8: flips and turns
    img.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif)
    return "jpg", buf.getvalue()


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3]: noise with a 1/f amplitude spectrum (natural images'), channels correlated."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(shape))
    common = rng.normal(size=(*amplitude.shape, 2)) @ [1, 1j]
    channels = []
    for _ in range(3):
        own = rng.normal(size=(*amplitude.shape, 2)) @ [1, 1j]
        field = np.fft.irfft2(amplitude * (common + 0.5 * own), s=shape)
        channels.append((field - field.mean()) / (field.std() + 1e-9))
    out = np.stack(channels, -1) * 45 + rng.uniform(70, 185, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_mix(root: str, count: int, per_shard: int = 100, seed: int = 0,
              side_range: tuple[int, int] = (MIN_SIDE, MAX_SIDE), processes: int = 1) -> list[str]:
    """WebDataset tar shards of the first `count` images under `root` (kept: a rerun reuses them);
    `processes` > 1 writes missing shards in that many processes."""
    jobs = []
    for s, start in enumerate(range(0, count, per_shard)):
        n = min(count, start + per_shard) - start
        jobs.append((os.path.join(root, f"{s:05d}-{n}.tar"), range(start, start + n), seed, side_range))
    todo = [job for job in jobs if not os.path.exists(job[0])]
    if todo:
        os.makedirs(root, exist_ok=True)
    if processes > 1 and len(todo) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            pool.starmap(_write_shard, todo)
    else:
        for job in todo:
            _write_shard(*job)
    return [job[0] for job in jobs]


def _write_shard(path: str, indices: range, seed: int, side_range: tuple[int, int]) -> None:
    write_tar(path, ((f"{i:06d}", *photo_like(i, seed, side_range), f"photo-like image {i}") for i in indices))


def write_tar(path: str, samples) -> None:
    """(key, extension, image bytes, caption) samples -> a WebDataset tar shard as img2dataset
    writes it (KEY.EXT + KEY.txt), atomically: a shard appears whole or not at all."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with tarfile.open(tmp, "w") as tar:
        for key, ext, data, caption in samples:
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    os.replace(tmp, path)
