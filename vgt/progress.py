"""Live progress of a long command, always on stderr (stdout carries data: JSON, paths, tables).

On a terminal a tqdm bar with count, rate and ETA; otherwise (logs, `ray job submit`, CI) one plain
line when the work starts, then at most one every `VGT_PROGRESS_EVERY_S` seconds (default 10), and
one at the end, so a log shows the command is alive without drowning in lines.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

EVERY_S_ENV = "VGT_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 10.0


def every_s() -> float:
    return float(os.environ.get(EVERY_S_ENV, DEFAULT_EVERY_S))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """`with Progress("prep", total=12, unit="part") as p: ... p.update(1)`; `p.set(n, loss=...)` jumps
    to a count (training steps). `start` is where a resumed count begins (the rate counts from it)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "it", start: int = 0,
                 stream: TextIO | None = None, tty: bool | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.n = self.first = start
        self.began = time.monotonic()
        self.fields: dict[str, object] = {}
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)
        else:
            self._emit(f"{label}: started" + (f", {total} {unit}s" if total is not None else "")
                       + (f", from {start}" if start else ""))
        self.printed = time.monotonic()

    def update(self, n: int = 1, **fields) -> None:
        self.set(self.n + n, **fields)

    def set(self, n: int, **fields) -> None:
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.update(n - self.n)
            if fields:
                self.bar.set_postfix_str(self._fields(), refresh=False)
        self.n = n
        if self.bar is None and time.monotonic() - self.printed >= every_s():
            self._emit(self.line())

    def note(self, text: str) -> None:
        """A one-off line (where results go, a resumed start) that does not break the bar."""
        if self.bar is not None:
            self.bar.write(f"{self.label}: {text}", file=self.stream)
        else:
            self._emit(f"{self.label}: {text}")

    def line(self) -> str:
        elapsed = time.monotonic() - self.began
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.label}: {count} {self.unit}s", f"{rate:.3g} {self.unit}/s", f"{_duration(elapsed)} elapsed"]
        if self.total is not None and rate > 0:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self.fields:
            parts.append(self._fields())
        return ", ".join(parts)

    def _fields(self) -> str:
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())

    def _emit(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self.printed = time.monotonic()

    def close(self, done: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.n is not None:
            self._emit(self.line() + (", done" if done else ", stopped"))
        self.n = None  # closed: a second close says nothing

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(done=kind is None)
