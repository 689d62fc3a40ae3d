"""Progress bars that move wherever the lab runs: a widget in Jupyter, text in a terminal, and in a
notebook executed headless (``CPTLAB_HEADLESS=1``, set by ``cptlab.notebook.execute``) plain text whose
last state, 100%, is what the saved notebook shows. Under ``cptlab lab`` (``CPTLAB_TERMINAL=1``) the
notebooks' long parts also print a line to the terminal as they go: a training run when it starts,
then every ``ECHO_EVERY`` seconds its steps, speed and time left, and its end."""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

HEADLESS = "CPTLAB_HEADLESS"
TERMINAL = "CPTLAB_TERMINAL"
ECHO_EVERY = 10.0  # seconds between two terminal lines of one bar


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TerminalEcho:
    """A bar that also prints plain lines to the process's own standard error (in a notebook kernel
    that is the terminal of ``cptlab lab``, not the cell): what runs, how far, how fast, how long left."""

    def __init__(self, bar, desc: str, unit: str, announce: bool):
        self.bar, self.desc, self.unit = bar, desc, unit
        self.last = time.monotonic()
        self.echoed = announce
        if announce:
            self._line(f"{bar.total} {unit}s, started")

    def _line(self, what: str) -> None:
        stream = sys.__stderr__ or sys.stderr
        print(f"[lab] {self.desc}: {what}", file=stream, flush=True)

    def _state(self) -> str:
        d = self.bar.format_dict
        n, total, elapsed, rate = d["n"], d["total"] or 0, d["elapsed"], d.get("rate") or 0
        rate = rate or (n - (d.get("initial") or 0)) / elapsed if elapsed else 0
        parts = [f"{n}/{total} {self.unit}s"]
        post = d.get("postfix")
        if post:
            parts.append(str(post))
        parts.append(f"{_clock(elapsed)} elapsed")
        if rate and total and n < total:
            parts.append(f"about {_clock((total - n) / rate)} left")
        return ", ".join(parts)

    def update(self, n: int = 1):
        out = self.bar.update(n)
        if time.monotonic() - self.last >= ECHO_EVERY:
            self.last = time.monotonic()
            self.echoed = True
            self._line(self._state())
        return out

    def close(self):
        if self.echoed:
            self._line(self._state().replace(" elapsed", " in all") + ", done")
            self.echoed = False
        return self.bar.close()

    def __getattr__(self, name):
        return getattr(self.bar, name)


def progress_bar(total: int, desc: str, initial: int = 0, leave: bool = True, unit: str = "it", announce: bool = False):
    """``unit``: what one update counts (a step, a window); ``announce``: a training run, whose start
    the terminal shows at once under ``cptlab lab`` (the others appear once they have run ``ECHO_EVERY`` seconds)."""
    if os.environ.get(HEADLESS) == "1":
        bar = text_tqdm(
            total=total, desc=desc, initial=initial, leave=True, file=sys.stderr, mininterval=2.0, ascii=True, unit=unit
        )
    else:
        bar = auto_tqdm(total=total, desc=desc, initial=initial, leave=leave, unit=unit)
    if os.environ.get(TERMINAL) == "1":
        return TerminalEcho(bar, desc, unit, announce)
    return bar
