"""A dependency-free progress bar for long commands: redrawn in place on a terminal, one line per item otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, item: str) -> None:
        """Say that ``item`` is starting."""
        elapsed = time.monotonic() - self.start
        if self.tty:
            filled = self.width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s  {item[:60]:<60}")
        else:
            self.stream.write(f"{self.label} {self.done + 1}/{self.total} ({elapsed:.1f}s): {item}\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        elapsed = time.monotonic() - self.start
        if self.tty:
            self.stream.write(f"\r{self.label} [{'#' * self.width}] {self.done}/{self.total} {elapsed:5.1f}s{' ' * 62}\n")
        else:
            self.stream.write(f"{self.label}: {self.done}/{self.total} done in {elapsed:.1f}s\n")
        self.stream.flush()
