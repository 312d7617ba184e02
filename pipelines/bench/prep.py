"""vgt prep (Ray Data, 2 CPUs) against plain loops on the same shards, memory, and prep-latents' cost.

Cases (each measured side by side in one run):
- `mix`: photo-like images of the size and format mix of real image-text shards (prep_inputs.py:
  shorter side 400-2000 px, JPEG and PNG, some with alpha, some EXIF-turned) -> 448 px. Rows: a naive
  full-decode loop (what one would write: open, exif_transpose, RGB, resize, save), the same-path
  loop (prep's own reader and `clean_sample`, no parquet) with full and with reduced decoding (the
  gain of draft mode), two same-path loop processes side by side on halves of the shards (the
  physical limit of 2 cores), and `vgt prep` on 2 CPUs (scaling = prep / same-path loop). prep's
  stored images must equal the loop's byte for byte (same decode path). Per-image minimum PSNR of
  reduced against full decoding. Peak USS/PSS of the driver and of the Ray workers, sampled during
  prep at two dataset sizes 4x apart (memory must not grow with the dataset).
- `640x480`: small images (where per-row costs dominate) -> 448 and -> 112 px: same-path loop,
  two loop processes, prep.
- latents: `vgt prep-latents` (one actor, 1 CPU; decoding in tasks on the other CPU) against plain
  in-process loops at the same batch size and thread count (demo preset AE, CPU): decode, centre
  crop and `ae.encode`, and `ae.encode` alone on crops decoded beforehand; the start-up on its own row.

`--quick`: the mix scaled to 1/4 (100-500 px -> 112 px, 48 images), no 640x480 case and no latents
(tests/test_prep_latents.py): a smoke run that still checks prep's output against the loop's and
the PSNR floor. Full runs keep their generated inputs in runs/bench-prep-cache.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import tarfile
import tempfile
import threading
import time

NAME = "prep"
MIN_PSNR_DB = 35.0   # reduced decoding's floor against full decoding (per image)
MEMORY_GROWTH_MAX = 1.2  # peak memory at 4x the images / at 1x
CACHE = os.path.join("runs", "bench-prep-cache")  # generated inputs, reused by later runs
LATENT_BATCH = 32


def run(quick: bool) -> list[dict]:
    import ray

    from vgt.presets import get_preset

    started_ray = not ray.is_initialized()
    if started_ray:
        # 2 CPUs: the comparison the issue asks for. Ray starts workers at nice 15; on a shared
        # machine the nice-0 loop would then get more CPU than the workers, and the ratio would
        # measure the neighbours, not the pipeline.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    try:
        with tempfile.TemporaryDirectory(prefix="vgt-bench-prep-") as tmp:
            if quick:
                cfg = get_preset("tiny")  # 112 px
                mix = _mix_files(os.path.join(tmp, "mix"), 48, per_shard=12, side_range=(100, 500))
                return _case("mix/4 -> 112", mix, cfg, tmp, memory=True)  # latents: tests/test_prep_latents.py
            from pipelines.bench.prep_inputs import write_mix

            cfg448 = get_preset("internvl3-1b")
            mix = write_mix(os.path.join(CACHE, "mix-400-2000"), 2000, processes=2)
            small = _small_files(os.path.join(CACHE, "640x480"), 16, 100)
            return (_case("mix -> 448", mix, cfg448, tmp, memory=True)
                    + _case("640x480 -> 448", small, cfg448, tmp)
                    + _case("640x480 -> 112", small, get_preset("tiny"), tmp)
                    + _latent_rows(tmp, small[:8], get_preset("demo")))
    finally:
        if started_ray:
            ray.shutdown()


def _mix_files(root: str, count: int, per_shard: int, side_range: tuple[int, int]) -> list[str]:
    from pipelines.bench.prep_inputs import write_mix

    return write_mix(root, count, per_shard, side_range=side_range)


def _small_files(root: str, shards: int, per_shard: int) -> list[str]:
    """img2dataset-like shards of 640x480 JPEGs (smooth gradient + noise), a caption each (cached)."""
    import numpy as np
    from PIL import Image

    from pipelines.bench.prep_inputs import write_tar

    yy, xx = np.mgrid[0:480, 0:640]

    def samples(s: int):
        rng = np.random.default_rng(s)
        for i in range(per_shard):
            base = np.stack([xx * 255 / 640, yy * 255 / 480, np.full_like(xx, (s * 37 + i * 11) % 256)], -1)
            buf = io.BytesIO()
            Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            yield f"{i:05d}", "jpg", buf.getvalue(), f"image {i} of shard {s}"

    os.makedirs(root, exist_ok=True)
    files = [os.path.join(root, f"{s:05d}-{per_shard}.tar") for s in range(shards)]
    for s, path in enumerate(files):
        if not os.path.exists(path):
            write_tar(path, samples(s))
    return files


# --- loops (plain Python, one process each) -------------------------------------------------------

def same_path_loop(files: list[str], data_cfg, reduced: bool = True) -> dict[str, str]:
    """prep's per-row work without Ray or parquet: its reader and `clean_sample` on every sample.
    Returns {stem/member: sha1 of the stored image bytes} of the kept rows."""
    from vgt.data.clean import Reject, clean_sample
    from vgt.data.sources import iter_samples, shard_stem

    out = {}
    for path in files:
        stem = shard_stem(path)
        for raw in iter_samples(path, "wds", data_cfg):
            try:
                row = clean_sample(raw.image, raw.caption, data_cfg, reduced=reduced)
            except Reject:
                continue
            out[f"{stem}/{raw.member}"] = hashlib.sha1(row["image"]).hexdigest()
    return out


def naive_loop(files: list[str], data_cfg) -> int:
    """What one would write without prep: full decode, EXIF turn, RGB, bicubic resize, JPEG."""
    from PIL import Image, ImageOps

    from vgt.data.clean import shorter_side_size

    n = 0
    for path in files:
        with tarfile.open(path) as tar:
            for info in tar:
                if info.name.endswith((".jpg", ".png")):
                    img = ImageOps.exif_transpose(Image.open(io.BytesIO(tar.extractfile(info).read()))).convert("RGB")
                    img = img.resize(shorter_side_size(*img.size, data_cfg.resolution), Image.Resampling.BICUBIC)
                    img.save(io.BytesIO(), "JPEG", quality=data_cfg.jpeg_quality)
                    n += 1
    return n


def _loop_process(files: list[str], data_cfg, barrier, results) -> None:
    """One of the two side-by-side loop processes: imports done, wait for the other, then run."""
    same_path_loop(files[:1], data_cfg)  # warm: imports and first-use costs, as the timed loops had
    barrier.wait(timeout=120)
    start = time.time()
    n = len(same_path_loop(files, data_cfg))
    results.put((start, time.time(), n))


def two_processes(files: list[str], data_cfg) -> tuple[float, int]:
    """(wall seconds, rows) of two same-path loops started together on alternate shards."""
    import queue

    ctx = multiprocessing.get_context("spawn")  # never fork a process that runs Ray
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_loop_process, args=(files[i::2], data_cfg, barrier, results)) for i in range(2)]
    for p in procs:
        p.start()
    done = []
    try:
        while len(done) < len(procs):
            try:
                done.append(results.get(timeout=1))
            except queue.Empty:  # a child that died never reports: fail instead of waiting forever
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a loop process exited with code {dead[0]}") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return max(d[1] for d in done) - min(d[0] for d in done), sum(d[2] for d in done)


def psnr_stats(files: list[str], data_cfg) -> tuple[float, int, int]:
    """(min PSNR in dB, images that differ, images) of reduced against full decoding, per image,
    before the JPEG encode (images a reduced decode does not touch are equal)."""
    import numpy as np

    from vgt.data.clean import Reject, decode_resized, open_checked
    from vgt.data.sources import iter_samples

    scores, n = [], 0
    for path in files:
        for raw in iter_samples(path, "wds", data_cfg):
            try:
                full = decode_resized(open_checked(raw.image, data_cfg), data_cfg.resolution, reduced=False)
                reduced = decode_resized(open_checked(raw.image, data_cfg), data_cfg.resolution)
            except Reject:
                continue
            n += 1
            mse = np.mean((np.asarray(full, np.float64) - np.asarray(reduced, np.float64)) ** 2)
            if mse:
                scores.append(10 * np.log10(255**2 / mse))
    return min(scores, default=float("inf")), len(scores), n


def _psnr_two_processes(files: list[str], data_cfg) -> tuple[float, int, int]:
    if len(files) <= 8:  # starting two processes would cost more than it saves
        return psnr_stats(files, data_cfg)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        halves = pool.starmap(psnr_stats, [(files[i::2], data_cfg) for i in range(2)])
    return min(h[0] for h in halves), sum(h[1] for h in halves), sum(h[2] for h in halves)


# --- memory ------------------------------------------------------------------------------------------

class ProcessSampler:
    """Peak USS and PSS (psutil memory_full_info: RSS would count the object store's shared pages) of
    this process and of the Ray worker processes it started, sampled every `every_s` on a thread
    when `memory` (a sweep costs ~3 ms of CPU per process: not during timed runs), and the CPU
    seconds each group used meanwhile: the driver, the workers, and Ray's own processes (raylet,
    GCS, agents). Workers of a cluster this process did not start are not its children."""

    AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")

    def __init__(self, memory: bool, every_s: float = 0.25):
        self.memory, self.every_s, self.peak = memory, every_s, {}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) per group while sampling."""
        out = {"cpu_driver_s": 0.0, "cpu_workers_s": 0.0, "cpu_ray_s": 0.0}
        for pid, (group, cpu) in self._cpu_last.items():
            out[f"cpu_{group}_s"] += cpu - self._cpu_start.get(pid, 0.0)
        return {k: round(v, 2) for k, v in out.items()}

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            self._sample(me, psutil)
            if self._stop.wait(self.every_s):
                self._sample(me, psutil)
                return

    def _sample(self, me, psutil) -> None:
        self._cpu(me.pid, "driver", me.cpu_times())
        workers = []
        for p in me.children(recursive=True):
            try:
                name = p.name()
                worker = name.startswith("ray::") and name not in self.AGENTS
                self._cpu(p.pid, "workers" if worker else "ray", p.cpu_times())
                if worker and self.memory:
                    workers.append(p.memory_full_info())
            except psutil.Error:  # a process that just exited
                pass
        if not self.memory:
            return
        driver = me.memory_full_info()
        mem = {"driver": [driver], "workers": workers}
        now = {"driver_uss_mb": mem["driver"][0].uss, "driver_pss_mb": mem["driver"][0].pss,
               "worker_uss_mb": max((w.uss for w in mem["workers"]), default=0),
               "worker_pss_mb": max((w.pss for w in mem["workers"]), default=0),
               "workers_uss_mb": sum(w.uss for w in mem["workers"]),
               "workers_pss_mb": sum(w.pss for w in mem["workers"])}
        for key, value in now.items():
            self.peak[key] = max(self.peak.get(key, 0.0), value / 2**20)

    def _cpu(self, pid: int, group: str, times) -> None:
        cpu = times.user + times.system
        self._cpu_start.setdefault(pid, cpu)  # a process that starts meanwhile counts from its first sample
        self._cpu_last[pid] = (group, cpu)


# --- one case --------------------------------------------------------------------------------------

def _case(label: str, files: list[str], cfg, tmp: str, memory: bool = False) -> list[dict]:
    from pipelines.prep.dataset import run_prep
    from vgt.data import PreparedDataset

    data_cfg = cfg.data
    raw = os.path.dirname(files[0])
    out = os.path.join(tmp, "prepared", label.replace(" ", "_").replace("/", "_"))

    def prep(inputs: list[str]) -> tuple[float, dict]:
        start = time.perf_counter()
        manifest = run_prep(inputs, out, cfg, overwrite=True)
        return time.perf_counter() - start, manifest

    prep(files[:2])  # warm-up: both Ray workers start and import (pandas too, on a first Arrow table)
    same_path_loop(files[:1], data_cfg, reduced=False)  # the loops' first-use costs, likewise

    start = time.perf_counter()
    n_naive = naive_loop(files, data_cfg)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    full = same_path_loop(files, data_cfg, reduced=False)
    full_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    loop = same_path_loop(files, data_cfg)
    loop_s, loop_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    two_s, n_two = two_processes(files, data_cfg)
    with ProcessSampler(memory=False, every_s=1.0) as cpu:
        prep_s, manifest = prep([raw])
    n = len(loop)
    assert n == n_naive == len(full) == n_two == manifest["counts"]["rows_out"], (n, n_naive, n_two, manifest["counts"])
    stored = {r["key"].split("/", 1)[1]: hashlib.sha1(r["image"]).hexdigest()
              for b in PreparedDataset(out).iter_batches(columns=["key", "image"]) for r in b.to_pylist()}
    assert stored == loop, "prep's stored images differ from the same-path loop's"
    psnr_min, n_reduced, n_psnr = _psnr_two_processes(files, data_cfg)
    assert psnr_min >= MIN_PSNR_DB, psnr_min

    def row(case: str, seconds: float, **extra) -> dict:
        return {"case": f"{label}: {case}", "images": n, "seconds": round(seconds, 3), "images_per_s": n / seconds, **extra}

    rows = [
        row("naive full-decode loop, 1 process", naive_s),
        row("same-path loop, full decode, 1 process", full_s),
        row("same-path loop, reduced decode, 1 process", loop_s, speedup=full_s / loop_s,
            psnr_min_db=round(psnr_min, 2), cpu_driver_s=round(loop_cpu_s, 2),
            note=f"gain of reduced decoding; {n_reduced} of {n_psnr} images reduced, PSNR vs full >= psnr_min_db"),
        row("2 same-path loop processes (limit)", two_s, speedup=loop_s / two_s, note="vs 1 loop process"),
        row("vgt prep, Ray Data, 2 CPUs", prep_s, speedup=loop_s / prep_s,
            vs_limit=two_s / prep_s, vs_naive=naive_s / prep_s, **cpu.cpu_seconds(),
            note="speedup: vs the same-path loop"),
    ]
    if memory:  # peak memory must not follow the dataset size (sampled in runs of their own, untimed)
        peaks = {}
        for share, inputs in (("1/4", files[: max(1, len(files) // 4)]), ("all", files)):  # a leak shows in the later run
            with ProcessSampler(memory=True) as mem:
                prep(inputs)
            peaks[share] = mem.peak
            rows.append({"case": f"{label}: vgt prep memory, {share} of the shards", **{k: round(v, 1) for k, v in mem.peak.items()}})
        growth = {k: peaks["all"][k] / peaks["1/4"][k] for k in ("driver_uss_mb", "worker_uss_mb") if peaks["1/4"][k]}
        rows[-1]["note"] = "peak, all / quarter: " + ", ".join(f"{k} {v:.2f}x" for k, v in growth.items())
        rows[-1]["memory_growth"] = round(max(growth.values()), 3)
    return rows


# --- latents -------------------------------------------------------------------------------------------

def _latent_rows(tmp: str, files: list[str], cfg) -> list[dict]:
    """prep-latents (one actor, 1 CPU: one torch thread; decoding in Ray Data tasks on the other
    CPU) against plain loops at the same batch size and thread count: one that decodes,
    centre-crops and encodes every row (what one process does), one that only encodes crops decoded
    beforehand (the actor's own work). The actor's time is what its calls took (pixel conversion,
    encoding, the copy back); the rest of the wall time is start-up (processes, AE load), the driver
    (gathering latents, writing parts) and the pipeline's fill and drain, on a row of its own."""
    import torch

    from pipelines.prep.add_latents import run_prep_latents
    from pipelines.prep.dataset import run_prep
    from vgt.ae import VGTAutoencoder
    from vgt.data import PreparedDataset
    from vgt.data.encode import center_crop_pixels, encode_pixels
    from vgt.data.images import center_crops, uint8_to_pixels

    data = os.path.join(tmp, "prepared", "latents")
    run_prep(files, data, cfg, overwrite=True)
    torch.manual_seed(0)
    ae = VGTAutoencoder.from_config(cfg.ae).eval()
    ae_dir = os.path.join(tmp, "ae")
    ae.save_pretrained(ae_dir)
    ds = PreparedDataset(data)
    images = [b for batch in ds.iter_batches(columns=["image"]) for b in batch.column("image").to_pylist()]
    res, batches = cfg.data.resolution, range(0, len(images), LATENT_BATCH)
    crops = [center_crops(images[i: i + LATENT_BATCH], res) for i in batches]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actor's: num_cpus=1 -> one torch thread
    try:
        encode_pixels(ae, center_crop_pixels(images[:LATENT_BATCH], res))  # warm-up
        start = time.perf_counter()
        for i in batches:
            encode_pixels(ae, center_crop_pixels(images[i: i + LATENT_BATCH], res))
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        for c in crops:
            encode_pixels(ae, uint8_to_pixels(c))
        encode_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    with ProcessSampler(memory=False, every_s=1.0) as cpu:
        start = time.perf_counter()
        manifest = run_prep_latents(data, ae_dir, batch_size=LATENT_BATCH, concurrency=1, num_cpus=1, overwrite=True)
        wall_s = time.perf_counter() - start
    parts = manifest["latents"]["parts"]
    in_actor_s = sum(p["seconds"] for p in parts.values())
    n, ae_name = len(images), f"{cfg.name} AE, batch {LATENT_BATCH}, 1 thread"
    actor_threads = {p["torch_threads"] for p in parts.values()}
    return [
        {"case": f"latents: loop, decode + crop + encode, 1 process ({ae_name})", "images": n,
         "seconds": round(loop_s, 3), "ms_per_image": 1e3 * loop_s / n},
        {"case": f"latents: loop, encode only (crops decoded beforehand) ({ae_name})", "images": n,
         "seconds": round(encode_s, 3), "ms_per_image": 1e3 * encode_s / n},
        {"case": f"latents: vgt prep-latents, 1 actor, in-actor ({ae_name})", "images": n, "seconds": round(in_actor_s, 3),
         "ms_per_image": 1e3 * in_actor_s / n, "speedup": loop_s / in_actor_s, "vs_encode_only": encode_s / in_actor_s,
         "torch_threads": max(actor_threads), "note": "speedup: vs the decode + crop + encode loop"},
        {"case": "latents: vgt prep-latents start-up + driver (wall - in-actor)", "seconds": round(wall_s - in_actor_s, 3),
         **cpu.cpu_seconds(), "note": f"wall {wall_s:.2f} s; CPU s of the whole run (start-up included)"},
    ]
