"""Experiment tracking (`train.tracking`) and live training progress, on the toy stage of
test_train under Ray Train: the TensorBoard event files and the MLflow store, read back with the
libraries' own readers, hold every step of metrics.jsonl at float32, the resolved config as
hyper-parameters, the sample grids as images and the final metrics, in exactly one run (TensorBoard
on one worker, MLflow on two: one writer whatever the workers); the driver prints progress lines
forwarded from rank 0's reports on stderr."""
from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from test_train import RAY, ToyStage, fit_toy, metrics, toy_data, toy_spec  # noqa: F401  (toy_data: fixture)

from vgt.train.tracking import flatten, scalars_of

STEPS = 6


class PreviewToyStage(ToyStage):
    """The toy stage with a preview grid whose pixels encode the step (so images are told apart)."""

    def preview(self, step, rows):
        return Image.fromarray(np.full((4, 8, 3), (40 * step) % 256, dtype=np.uint8))


def tracked_spec(data: str, out: str, tracking: str, **train):
    spec = toy_spec([data], out, steps=STEPS, sample_every=3, tracking=tracking, **train)
    spec.stage = PreviewToyStage
    return spec


def fit_tracked(spec, workers: int) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    fit_toy(spec, workers=workers)


def step_records(out: str) -> list[dict]:
    return [r for r in metrics(out) if "event" not in r]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow store for the session (creating its tables takes seconds)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("vgt", artifact_location=str(root / "artifacts"))  # not ./mlruns
    return uri


def read_tensorboard(logdir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.timeout(240)
def test_tensorboard_on_one_worker_holds_metrics_jsonl_config_images_and_final(ray_cluster, toy_data, tmp_path,
                                                                               capfd):
    from tensorboard.plugins.hparams import plugin_data_pb2

    spec = tracked_spec(toy_data, str(tmp_path / "run"), "tensorboard")
    fit_tracked(spec, workers=1)
    logdir = os.path.join(spec.out, "tensorboard")
    files = os.listdir(logdir)
    assert len(files) == 1 and files[0].startswith("events.out.tfevents")  # one writer, one run, any workers
    acc = read_tensorboard(logdir)
    records = step_records(spec.out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in scalars_of(records[0]):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in records]
        assert [e.value for e in events] == [np.float32(r[key]) for r in records]
    assert {"loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"} <= set(acc.Tags()["scalars"])
    # final metrics = the last step's
    last = records[-1]
    assert [(e.step, e.value) for e in acc.Scalars("final/loss")] == [(STEPS, np.float32(last["loss"]))]
    # the resolved config as hyper-parameters
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    flat = flatten(spec.config)
    assert set(hparams) == set(flat)
    assert hparams["train.seed"].number_value == flat["train.seed"] == 42
    assert hparams["train.tracking"].string_value == "tensorboard"
    assert hparams["train.ar_pretrain.lr"].number_value == pytest.approx(flat["train.ar_pretrain.lr"])
    # the sample grids, pixel for pixel
    images = acc.Images("samples")
    assert [i.step for i in images] == [3, 6]
    for image in images:
        got = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        with open(os.path.join(spec.out, "samples", f"step-{image.step:08d}.png"), "rb") as f:
            assert np.array_equal(got, np.asarray(Image.open(f).convert("RGB")))
    # live progress from rank 0's reports, on stderr only
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("ar_pretrain: ")]
    assert any(f"{STEPS}/{STEPS} steps" in line and "loss" in line and "samples_per_s" in line and "lr" in line
               for line in lines), lines
    assert "tracking: TensorBoard event files in " + logdir in err
    assert "ar_pretrain: " not in out


@pytest.mark.timeout(240)
def test_mlflow_on_two_workers_holds_metrics_jsonl_config_images_and_final(ray_cluster, toy_data, tmp_path,
                                                                           mlflow_uri):
    from mlflow.tracking import MlflowClient

    spec = tracked_spec(toy_data, str(tmp_path / "run"), "mlflow", tracking_uri=mlflow_uri)
    fit_tracked(spec, workers=2)
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("vgt")
    runs = client.search_runs([experiment.experiment_id], f"tags.`vgt.run_folder` = '{spec.out}'")
    assert len(runs) == 1  # one writer, one run, however many workers
    run = runs[0]
    assert run.info.status == "FINISHED"
    records = step_records(spec.out)
    for key in scalars_of(records[0]):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [r["step"] for r in records]
        assert [np.float32(m.value) for m in history] == [np.float32(r[key]) for r in records]
    assert run.data.metrics["final/loss"] == records[-1]["loss"]
    flat = flatten(spec.config)
    assert run.data.params == {k: str(v) for k, v in flat.items()}
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert artifacts == ["samples/step-00000003.png", "samples/step-00000006.png"]


def test_an_unknown_tracker_is_a_usage_error(toy_data, tmp_path):
    from pipelines.train.config import ray_train_config
    from pipelines.train.launch import fit
    from vgt.errors import UsageError

    with pytest.raises(UsageError, match="train.tracking='wandb': expected one of tensorboard, mlflow, none"):
        fit(tracked_spec(toy_data, str(tmp_path / "bad"), "wandb"), ray_train_config(RAY))


def test_tensorboard_for_an_s3_run_folder_uploads_its_event_file(s3_bucket):
    """An s3:// run folder: the event file is written locally, said so, and uploaded at each sync."""
    from vgt import io as vio
    from vgt.train.tracking import open_tracker

    out = f"s3://{s3_bucket}/run"
    tracker = open_tracker("tensorboard", out, {"train": {"seed": 1}}, name="s3")
    assert tracker.where.startswith(f"TensorBoard event files in {out}/tensorboard (written in ")
    tracker.scalars(1, {"loss": 0.25})
    tracker.sync()
    assert len(vio.glob(f"{out}/tensorboard/events.out.tfevents*")) == 1
    tracker.scalars(2, {"loss": 0.125})
    tracker.close()
    local = vio.local_copy(f"{out}/tensorboard", tracker.logdir + "-copy")
    assert [(e.step, e.value) for e in read_tensorboard(local).Scalars("loss")] == [(1, 0.25), (2, 0.125)]
