"""The training progress display: the loss, learning rate, utterances/s and the ETA.

It writes to stderr and only when enabled (``--no-progress`` turns it off), so the JSON
result lines on stdout stay clean. On a terminal it is a tqdm bar; when stderr is a file or
a pipe (a log, ``nohup``, a job scheduler) it is a plain line every ``interval`` seconds and
at the end instead, since a bar's carriage returns turn a log into one endless line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A step counter shown on stderr (nothing at all when ``enabled`` is false).

    ``update(step)`` moves it to ``step``; ``postfix(loss=..., lr=..., utt_s=...)`` shows the
    latest logged values next to the rate and ETA.

    Args:
        total: the run's steps.
        initial: the steps done before (a resumed run).
        enabled: show anything at all.
        stream: where to write (default: stderr).
        interval: seconds between plain lines when ``stream`` is not a terminal.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 30.0):
        self._bar = None
        self._step = self._initial = initial
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        self._interval = float(interval)
        self._postfix = ""
        self._lines = False
        self._start = self._last = time.monotonic()
        if not enabled:
            return
        isatty = getattr(self._stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                             file=self._stream, desc="train")
        else:
            self._lines = True

    def update(self, step: int) -> None:
        """Advance to ``step``.

        Args:
            step: the number of steps done so far (the display never moves back).
        """
        if self._bar is not None and step > self._step:
            self._bar.update(step - self._step)
        self._step = max(self._step, step)
        if self._lines and time.monotonic() - self._last >= self._interval:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        done = self._step - self._initial
        rate = done / max(now - self._start, 1e-9)
        eta = (self._total - self._step) / rate if rate > 0 else 0.0
        text = f"train: step {self._step}/{self._total} ({100 * self._step / max(self._total, 1):.0f}%)"
        text += f", {rate:.2f} steps/s, elapsed {_clock(now - self._start)}, ETA {_clock(eta)}"
        print(text + (f", {self._postfix}" if self._postfix else ""), file=self._stream, flush=True)
        self._last = now

    def postfix(self, loss: float, lr: float, utt_s: float) -> None:
        """Show the latest loss, learning rate and throughput.

        Args:
            loss: the latest logged training loss.
            lr: the learning rate.
            utt_s: utterances per second.
        """
        self._postfix = f"loss={loss:.3f} lr={lr:.2e} utt/s={utt_s:.1f}"
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix, refresh=False)

    def close(self) -> None:
        """Close the display (idempotent); plain lines end with a last one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._lines:
            if self._step > self._initial:
                self._line()
            self._lines = False
