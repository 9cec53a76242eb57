"""The study's progress line: stages done/total, the running ones, elapsed time and an estimate.

On a terminal one line is redrawn in place (tqdm-like) and stage events print above it; in a log
(not a TTY) the events print as they happen and the status line every `every_s` seconds. The
estimate comes from STUDY/timings.jsonl: each stage's last recorded duration, where it has one.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from echosynth.gen.core.io import read_jsonl


def fmt_seconds(s: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 7.4 -> '7s'."""
    s = int(round(max(s, 0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def load_history(timings: Path) -> dict[str, float]:
    """Each stage's last recorded duration (seconds) from timings.jsonl."""
    out: dict[str, float] = {}
    if Path(timings).is_file():
        for rec in read_jsonl(timings):
            if isinstance(rec.get("seconds"), (int, float)) and rec.get("stage"):
                out[rec["stage"]] = float(rec["seconds"])
    return out


class Progress:
    """Tracks the selected stages and prints the status line (see the module docstring)."""

    def __init__(self, names: list[str], history: dict[str, float], slots: int, stream: TextIO | None = None,
                 tty: bool | None = None, every_s: float = 60.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.names, self.history, self.slots, self.every_s = list(names), history, max(1, slots), every_s
        self.done: set[str] = set()
        self.running: dict[str, float] = {}  # name -> start (monotonic)
        self.t0 = time.monotonic()
        self._last_plain = self.t0
        self._drawn = False
        self._last_draw = 0.0

    # -- events ---------------------------------------------------------------------------

    def add(self, names: list[str]) -> None:
        """Track more stages (the graph is rebuilt after the data stages)."""
        self.names += [n for n in names if n not in self.names]

    def started(self, name: str) -> None:
        self.running[name] = time.monotonic()
        self.draw()

    def finished(self, name: str) -> None:
        """A stage ended (done, cached, failed or skipped): it no longer counts as remaining."""
        self.running.pop(name, None)
        self.done.add(name)
        self.draw()

    def echo(self, msg: str) -> None:
        """Print an event line (above the status line on a terminal)."""
        self._clear()
        print(msg, file=self.stream, flush=True)
        self.draw()

    def tick(self) -> None:
        """Called while waiting: redraw on a terminal, a plain line every `every_s` otherwise."""
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.5:  # the clock changes once a second; no need for more
                self.draw()
        elif self.running and now - self._last_plain >= self.every_s:
            self._last_plain = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        self._clear()

    # -- the line -------------------------------------------------------------------------

    def eta(self) -> tuple[float | None, int]:
        """(seconds left from the history, number of remaining stages without history)."""
        now = time.monotonic()
        left, unknown, longest = 0.0, 0, 0.0
        for n in self.names:
            if n in self.done:
                continue
            est = self.history.get(n)
            if est is None:
                unknown += 1
                continue
            rest = max(est - (now - self.running[n]), 0.0) if n in self.running else est
            left += rest
            longest = max(longest, rest)
        known = len([n for n in self.names if n not in self.done]) - unknown
        if known == 0:
            return None, unknown
        return max(longest, left / self.slots), unknown

    def line(self) -> str:
        now = time.monotonic()
        parts = [f"study {len(self.done)}/{len(self.names)} done"]
        if self.running:
            parts.append("running " + ", ".join(f"{n} {fmt_seconds(now - t)}" for n, t in self.running.items()))
        parts.append(f"{fmt_seconds(now - self.t0)} elapsed")
        eta, unknown = self.eta()
        if eta is not None:
            parts.append(f"ETA {'>' if unknown else ''}{fmt_seconds(eta)}")
        return " · ".join(parts)

    def draw(self) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = self.line()
        if len(text) > width:
            text = text[: max(width - 1, 0)] + "…"
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn, self._last_draw = True, time.monotonic()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False
