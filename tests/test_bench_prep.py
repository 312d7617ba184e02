"""`vgt bench prep --quick` in the suite: every row present and consistent, prep's stored images equal
the same-path loop's (the benchmark asserts it), reduced decoding within the PSNR floor, memory sampled."""
from __future__ import annotations

import pytest

from pipelines.bench import prep


@pytest.mark.timeout(120)
def test_bench_prep_quick(ray_cluster):
    rows = {r["case"].split(": ", 1)[1]: r for r in prep.run(quick=True)}
    assert list(rows) == ["naive full-decode loop, 1 process", "same-path loop, full decode, 1 process",
                          "same-path loop, reduced decode, 1 process", "2 same-path loop processes (limit)",
                          "vgt prep, Ray Data, 2 CPUs", "vgt prep memory, 1/4 of the shards",
                          "vgt prep memory, all of the shards"]
    timed = [r for r in rows.values() if "images" in r]
    assert {r["images"] for r in timed} == {48}  # every side kept every image
    for r in timed:
        assert r["images_per_s"] == pytest.approx(48 / r["seconds"], rel=0.01)
    reduced = rows["same-path loop, reduced decode, 1 process"]
    assert prep.MIN_PSNR_DB <= reduced["psnr_min_db"] < 60  # some images were decoded reduced, within the floor
    run = rows["vgt prep, Ray Data, 2 CPUs"]
    assert run["vs_naive"] == pytest.approx(rows["naive full-decode loop, 1 process"]["seconds"] / run["seconds"], rel=0.01)
    assert run["cpu_workers_s"] > 0.5 * reduced["cpu_driver_s"] and run["cpu_driver_s"] > 0 and run["cpu_ray_s"] > 0
    for share in ("1/4", "all"):
        r = rows[f"vgt prep memory, {share} of the shards"]
        assert 50 < r["driver_uss_mb"] <= r["driver_pss_mb"] < 4000
        assert 20 < r["worker_uss_mb"] <= r["worker_pss_mb"] and r["workers_uss_mb"] >= r["worker_uss_mb"]
    assert rows["vgt prep memory, all of the shards"]["memory_growth"] > 0.5


def test_same_path_loop_and_psnr_on_one_shard(tmp_path):
    """The loop's rows and the PSNR floor without Ray: full and reduced keep the same keys, and the
    images they store differ exactly where a reduced decode applied."""
    from pipelines.bench.prep_inputs import write_mix
    from vgt.config import DataConfig

    cfg = DataConfig(resolution=112)
    files = write_mix(str(tmp_path), 12, per_shard=12, side_range=(100, 500))
    full, reduced = prep.same_path_loop(files, cfg, reduced=False), prep.same_path_loop(files, cfg)
    assert sorted(full) == sorted(reduced) == [f"00000-12/{i:06d}" for i in range(12)]
    psnr_min, differ, n = prep.psnr_stats(files, cfg)
    assert n == 12 and differ == sum(full[k] != reduced[k] for k in full) and 3 <= differ < 12
    assert psnr_min >= prep.MIN_PSNR_DB
