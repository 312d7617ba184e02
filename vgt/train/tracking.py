"""Experiment tracking (`train.tracking`): one writer per run, fed the records rank 0 reports.

The engine never writes to a tracker itself: rank 0's metric records travel with its reports to
the launcher (`pipelines.train.monitor`), which owns the one `Tracker` of the run. So one worker
and eight workers both make exactly one TensorBoard run or one MLflow run.

- "tensorboard": `torch.utils.tensorboard` event files in OUT/tensorboard (`tensorboard --logdir
  OUT/tensorboard`). For an `s3://` run folder they are written to a local folder first and
  uploaded to OUT/tensorboard at every checkpoint and at the end.
- "mlflow": one MLflow run in the experiment "vgt" of `train.tracking_uri` (else MLFLOW_TRACKING_URI,
  else mlflow's default local store); its id is kept in OUT/mlflow_run.json, so rerunning the
  command (resuming) continues the same MLflow run.
- "none": metrics.jsonl only.

What is logged: every step's scalars (loss terms, lr, grad norm, samples/s, tokens/s) at its step,
the resolved config as hyper-parameters, the sample / reconstruction grids of OUT/samples as
images, and the last step's metrics as `final/<name>`.
"""
from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from typing import Protocol

from vgt import io as vio
from vgt.errors import UsageError

TRACKERS = ("tensorboard", "mlflow", "none")
EXPERIMENT = "vgt"
MLFLOW_RUN_FILE = "mlflow_run.json"
TENSORBOARD_DIR = "tensorboard"
# Not scalars of a step: bookkeeping fields of a metrics.jsonl record.
NOT_SCALARS = ("step", "time", "event")


class Tracker(Protocol):
    where: str  # said to the user: where the run can be looked at

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, tag: str, png: bytes) -> None: ...

    def final(self, values: dict[str, float]) -> None: ...

    def sync(self) -> None:
        """Make what was written durable (flush; upload for s3:// run folders)."""

    def close(self) -> None: ...


def check_tracking(kind: str) -> None:
    if kind not in TRACKERS:
        raise UsageError(f"train.tracking={kind!r}: expected one of {', '.join(TRACKERS)}")
    if kind == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise UsageError("train.tracking=mlflow needs mlflow: pip install 'vgt[mlflow]'") from None


def open_tracker(kind: str, out: str, config: dict, name: str, uri: str | None = None) -> Tracker:
    """The run's tracker; `config` (the resolved config, nested) is logged as hyper-parameters."""
    check_tracking(kind)
    if kind == "none":
        return NullTracker()
    params = flatten(config)
    if kind == "tensorboard":
        return TensorBoardTracker(out, params)
    return MLflowTracker(out, params, name, uri)


def scalars_of(record: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl step record (the same floats the tracker logs)."""
    return {k: float(v) for k, v in record.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested config -> dotted keys with scalar values (lists and None as JSON text)."""
    flat: dict = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


class NullTracker:
    where = "metrics.jsonl only (train.tracking=none)"

    def scalars(self, step, values): pass

    def image(self, step, tag, png): pass

    def final(self, values): pass

    def sync(self): pass

    def close(self): pass


class TensorBoardTracker:
    def __init__(self, out: str, params: dict):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.remote = vio.join(out, TENSORBOARD_DIR) if vio.is_s3(out) else None
        logdir = tempfile.mkdtemp(prefix="vgt-tensorboard-") if self.remote else vio.join(out, TENSORBOARD_DIR)
        self.where = (f"TensorBoard event files in {self.remote} (written in {logdir}, uploaded at checkpoints)"
                      if self.remote else f"TensorBoard event files in {logdir}")
        self.logdir = logdir
        self.writer = SummaryWriter(logdir)
        # the hparams plugin's three summaries, in this run's own event file (add_hparams would
        # start a second run in a sub-folder)
        for summary in hparams(params, {}):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def image(self, step, tag, png):
        import numpy as np
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), step, dataformats="HWC")

    def final(self, values):
        self.writer.add_text("final", json.dumps(values, indent=1))
        step = int(values.get("step", 0))
        for key, value in scalars_of(values).items():
            self.writer.add_scalar(f"final/{key}", value, step)

    def sync(self):
        self.writer.flush()
        if self.remote:
            vio.upload(self.logdir, self.remote)

    def close(self):
        self.writer.close()
        self.sync()
        if self.remote:  # uploaded: the local copy has served its purpose
            shutil.rmtree(self.logdir, ignore_errors=True)


class MLflowTracker:
    def __init__(self, out: str, params: dict, name: str, uri: str | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)  # None: MLFLOW_TRACKING_URI, else mlflow's default store
        marker = vio.join(out, MLFLOW_RUN_FILE)
        known = vio.read_json(marker) if vio.exists(marker) else None
        if known and known["tracking_uri"] == self.client.tracking_uri:  # a resumed run continues its MLflow run
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags={"vgt.run_folder": out}).info.run_id
            items = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i:i + 100])
            vio.write_json(marker, {"tracking_uri": self.client.tracking_uri, "run_id": self.run_id})
        self.where = f"MLflow run {self.run_id} in {self.client.tracking_uri} (experiment {EXPERIMENT!r})"

    def scalars(self, step, values):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def image(self, step, tag, png):
        from PIL import Image

        self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), f"{tag}/step-{step:08d}.png")

    def final(self, values):
        self.scalars(int(values.get("step", 0)), {f"final/{k}": v for k, v in scalars_of(values).items()})

    def sync(self):
        pass

    def close(self):
        self.client.set_terminated(self.run_id)
