"""The training progress bar: tqdm with the loss, learning rate, utterances/s and the ETA.

It writes to stderr and only when enabled (``--no-progress`` turns it off), so the JSON
result lines on stdout stay clean.
"""

from __future__ import annotations

import sys

__all__ = ["Progress"]


class Progress:
    """A step counter shown as a tqdm bar on stderr (nothing at all when ``enabled`` is false).

    ``update(step)`` moves the bar to ``step``; ``postfix(loss=..., lr=..., utt_s=...)`` shows the
    latest logged values next to tqdm's own rate and ETA.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self._bar = None
        self._step = initial
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                             file=sys.stderr, desc="train")

    def update(self, step: int) -> None:
        """Advance the bar to ``step``.

        Args:
            step: the number of steps done so far (the bar never moves back).
        """
        if self._bar is not None and step > self._step:
            self._bar.update(step - self._step)
        self._step = step

    def postfix(self, loss: float, lr: float, utt_s: float) -> None:
        """Show the latest loss, learning rate and throughput.

        Args:
            loss: the latest logged training loss.
            lr: the learning rate.
            utt_s: utterances per second.
        """
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss={loss:.3f} lr={lr:.2e} utt/s={utt_s:.1f}", refresh=False)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
