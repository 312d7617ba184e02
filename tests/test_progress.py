"""Live progress (`vgt.progress`): a plain line at the start and then every VGT_PROGRESS_EVERY_S
seconds off a terminal, a tqdm bar with rate and ETA on one, always on stderr; a long command's
first line comes before its work and its stdout JSON stays parseable."""
from __future__ import annotations

import io
import json
import os
import re
import sys
import time

import pytest

from test_eval_protocols import tiny_pipeline  # noqa: F401  (a fixture: a saved tiny pipeline)

from vgt.progress import Progress


class Stamped(io.StringIO):
    """A stream that remembers when each line was written."""

    def __init__(self, tty: bool = False):
        super().__init__()
        self.lines: list[tuple[float, str]] = []
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def write(self, text: str) -> int:
        self.lines += [(time.monotonic(), line) for line in text.splitlines() if line.strip()]
        return super().write(text)


def test_plain_lines_start_at_once_then_every_n_seconds(monkeypatch):
    monkeypatch.setenv("VGT_PROGRESS_EVERY_S", "3600")
    stream = Stamped()
    with Progress("prep", total=4, unit="part", stream=stream) as p:
        assert [line for _, line in stream.lines] == ["prep: started, 4 parts"]  # before any work
        p.update(1)
        p.update(1, rows_kept=7)
        assert len(stream.lines) == 1  # an hour between lines: nothing until the end
    end = stream.lines[-1][1]
    assert re.fullmatch(r"prep: 2/4 parts, [0-9.e+]+ part/s, \d+ s elapsed, \d+ s left, rows_kept 7, done", end), end
    monkeypatch.setenv("VGT_PROGRESS_EVERY_S", "0")
    stream = Stamped()
    with Progress("train", total=10, unit="step", start=4, stream=stream) as p:
        p.set(6, loss=0.25, lr=1e-4)
    lines = [line for _, line in stream.lines]
    assert lines[0] == "train: started, 10 steps, from 4"
    assert lines[1].startswith("train: 6/10 steps, ") and lines[1].endswith("loss 0.25, lr 0.0001")
    assert lines[2].endswith(", done")


def test_a_terminal_gets_a_bar_with_rate_and_eta():
    stream = Stamped(tty=True)
    with Progress("generate", total=4, unit="image", stream=stream) as p:
        p.update(2)
        p.note("writing to out/")
        p.update(2)
    text = stream.getvalue()
    assert "\r" in text and "generate: writing to out/" in text
    assert re.search(r"generate: 100%\|[^|]*\| 4/4 \[[0-9:]+<[0-9:]+, +[0-9.]+image/s\]", text), text


@pytest.fixture(scope="module")
def ae_and_data(tiny_pipeline, tmp_path_factory):  # noqa: F811
    from pipelines.prep.dataset import run_prep
    from vgt.eval.shapes.dataset import write_shard
    from vgt.presets import get_preset

    root = tmp_path_factory.mktemp("progress")
    for shard in range(2):
        write_shard(str(root / "shards"), shard, 2, seed=shard, split="heldout")
    run_prep([str(root / "shards")], str(root / "prepared"), get_preset("tiny"), in_process=True)
    return os.path.join(tiny_pipeline, "ae"), str(root / "prepared")


@pytest.mark.timeout(120)
def test_eval_prints_progress_first_on_stderr_and_only_json_on_stdout(ray_cluster, ae_and_data, capsys, monkeypatch):
    from ray_jobs.cli import main

    ae, data = ae_and_data
    monkeypatch.setenv("VGT_PROGRESS_EVERY_S", "0")
    began = time.monotonic()
    stream = Stamped()
    monkeypatch.setattr(sys, "stderr", stream)
    assert main(["eval", "recon", "--ae", ae, "--data", data, "--no-fd"]) == 0
    ended = time.monotonic()
    result = json.loads(capsys.readouterr().out)  # stdout is the JSON and nothing else
    assert result["images"] == 4
    progress = [(t, line) for t, line in stream.lines if line.startswith("eval recon: ")]
    assert [line for _, line in progress][0] == "eval recon: started, 2 parts"
    assert progress[0][0] - began < 5.0  # before Ray Data starts an actor (the command took longer)
    assert [re.match(r"eval recon: (\d)/2 parts", line).group(1) for _, line in progress[1:]] == ["1", "2", "2"]
    assert progress[-1][1].endswith(", images 4, done") and progress[-1][0] <= ended
