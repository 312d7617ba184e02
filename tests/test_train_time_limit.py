"""train.time_limit_s (the demo's stage budgets): the run stops at the step that crosses the limit
and still exports, as if it had reached its last step."""
from __future__ import annotations

from test_train import ToyStage, toy_data, toy_spec  # noqa: F401  (toy_data is a fixture)

from vgt.train.distributed import WorkerEnv
from vgt.train.loop import run_loop
from vgt import io as vio


def test_time_limit_stops_and_exports(toy_data, tmp_path):  # noqa: F811
    out = str(tmp_path / "run")
    records = run_loop(toy_spec([toy_data], out, steps=12, time_limit_s=0.0), WorkerEnv())
    assert [r["step"] for r in records if "loss" in r] == [1]  # a limit of 0 s ends after the first step
    assert records[-1] == {"event": "time_limit", "step": 1, "time_limit_s": 0.0}
    assert vio.exists(vio.join(out, "export", "model.safetensors"))
    full = run_loop(toy_spec([toy_data], str(tmp_path / "free"), steps=3, time_limit_s=3600.0), WorkerEnv())
    assert [r["step"] for r in full if "loss" in r] == [1, 2, 3]  # a generous limit changes nothing
