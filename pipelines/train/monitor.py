"""The driver's view of a training run: live progress lines and the run's one tracking writer.

Rank 0 attaches every metrics record since its previous report to its `ray.train.report`
(`vgt.train.loop`). Ray Train V2 calls a `UserCallback`'s `after_report` once all workers have
reported, in the Train controller (an actor pinned to the driver's node); `Forward` hands rank 0's
records from there to a queue, and a thread of the driver process (`Monitor`) turns them into
progress lines on stderr and writes to the tracker (`vgt.train.tracking`). However many workers
train, one process writes one TensorBoard or MLflow run.
"""
from __future__ import annotations

import logging
import threading
from queue import Empty

from ray.train import UserCallback

from vgt import io as vio
from vgt.progress import Progress
from vgt.train.tracking import Tracker, scalars_of

log = logging.getLogger(__name__)


class Forward(UserCallback):
    """In the Train controller: rank 0's records of each report -> the driver's queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        records = metrics[0].get("records", []) if metrics else []
        self.queue.put({"records": records, "checkpoint": checkpoint is not None})


class Monitor:
    """`with Monitor(tracker, progress) as m: TorchTrainer(..., RunConfig(callbacks=[m.callback])).fit()`."""

    def __init__(self, tracker: Tracker, progress: Progress):
        from ray.util.queue import Queue

        self.tracker, self.progress = tracker, progress
        self.queue = Queue(actor_options={"num_cpus": 0})  # a bookkeeping actor: takes no CPU slot
        self.callback = Forward(self.queue)
        self.last: dict | None = None  # the newest step record
        self._sampled = 0  # the newest sample grid's step
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="vgt-train-monitor", daemon=True)

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._done.set()  # fit() has returned: every after_report has put its item
        self._thread.join()
        self.queue.shutdown()
        if kind is None and self.last is not None:
            self.tracker.final(self.last)
        self.tracker.close()
        self.progress.close(done=kind is None)

    def _drain(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=0.2)
            except Empty:
                if self._done.is_set():
                    return
                continue
            try:
                self.handle(item)
            except Exception:  # a tracking backend failing must not end the training run
                log.exception("tracking: could not write a report's records")

    def handle(self, item: dict) -> None:
        for record in item["records"]:
            step, event = record["step"], record.get("event")
            if event is None:
                if self.last is not None and step <= self.last["step"]:
                    continue  # replayed after a worker-group restart (bitwise the steps already written)
                self.tracker.scalars(step, scalars_of(record))
                self.last = record
                shown = {k: record[k] for k in ("loss", "samples_per_s", "lr") if k in record}
                self.progress.set(step, **shown)
            elif event == "sample" and step > self._sampled:
                self.tracker.image(step, "samples", vio.read_bytes(record["uri"]))
                self._sampled = step
            elif event == "start" and step:
                self.progress.note(f"resumed at step {step} on {record['world_size']} worker(s)")
        if item["checkpoint"]:
            self.tracker.sync()
