"""Live progress of a run on a terminal, or plain periodic lines when output is not a TTY."""

import sys
from collections.abc import Callable
from typing import TextIO

from tenantfleet.runs import Counts

BAR_WIDTH = 30


def progress_line(tally: Counts, elapsed: float) -> str:
    rate = tally.done / elapsed if elapsed > 0 else 0.0
    eta = f"{tally.pending / rate:.0f}s" if rate > 0 and tally.pending else "-"
    return (
        f"{tally.done}/{tally.total} done, {tally.failed} failed"
        + (f", {tally.skipped} skipped" if tally.skipped else "")
        + (f", {tally.retrying} retrying" if tally.retrying else "")
        + f", {rate:.1f}/s, ETA {eta}"
    )


class Progress:
    """Callable given to ``producer.wait``: redraws a bar, or prints a line every few seconds."""

    def __init__(
        self,
        stream: TextIO = sys.stderr,
        every: float = 5.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        """``say``: where the periodic lines go instead of ``stream`` (no bar then)."""
        self.stream = stream
        self.say = say
        self.tty = stream.isatty() and say is None
        self.every = every
        self._next_line = 0.0
        self._last: tuple[int, int] | None = None

    def __call__(self, tally: Counts, elapsed: float) -> None:
        if tally.total == 0:
            return
        if self.tty:
            share = tally.done / tally.total if tally.total else 1.0
            filled = int(share * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {progress_line(tally, elapsed)}\033[K")
            self.stream.flush()
        elif elapsed >= self._next_line or (tally.pending == 0 and self._last != (tally.done, 0)):
            line = f"progress: {progress_line(tally, elapsed)}"
            if self.say is not None:
                self.say(line)
            else:
                self.stream.write(line + "\n")
                self.stream.flush()
            self._next_line = elapsed + self.every
        self._last = (tally.done, tally.pending)

    def close(self) -> None:
        if self.tty and self._last is not None:
            self.stream.write("\n")
            self.stream.flush()
