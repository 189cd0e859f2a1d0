"""Progress of a phase that takes more than a few seconds: a tqdm bar with an ETA on a terminal,
a plain line every `every` seconds otherwise (a log file gets lines, not carriage returns)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """`done(n)` as work finishes; `close()` at the end. Disabled: does nothing."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, every: float = 30.0):
        self.total, self.desc, self.every = total, desc, every
        self.enabled = enabled and total > 0
        on_terminal = self.enabled and sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, leave=False) if on_terminal else None
        self._count = 0
        self._shown: dict[str, object] = {}
        self._started = self._last = time.monotonic()

    def done(self, n: int = 1, **shown: object) -> None:
        """`n` more finished; `shown` (e.g. f1="0.412") goes beside the bar or into the line."""
        if not self.enabled:
            return
        self._count += n
        self._shown = shown or self._shown
        if self._bar is not None:
            self._bar.update(n)
            if shown:
                self._bar.set_postfix(shown, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every and self._count < self.total:
            self._last = now
            print(self.line(now - self._started), file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        """ "desc: 23/50, 70 s, about 82 s left" (the rate so far)."""
        left = f"{elapsed / self._count * (self.total - self._count):.0f}" if self._count else "?"
        shown = "".join(f", {k} {v}" for k, v in self._shown.items())
        return (f"{self.desc}: {self._count}/{self.total}, {elapsed:.0f} s, about {left} s "
                f"left{shown}")  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
