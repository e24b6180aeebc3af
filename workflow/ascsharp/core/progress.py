"""Progress lines for long work (epochs, grid points): done/total, rate and ETA, to the log."""

from __future__ import annotations

import logging
import sys
import time


def get_logger(name: str = "ascsharp") -> logging.Logger:
    """A logger writing timestamped lines to stderr, which Snakemake rules redirect to their log."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class Progress:
    """Counts units of work and reports rate and ETA; `unit` names them in the log line."""

    def __init__(self, total: int, unit: str, logger: logging.Logger | None = None, done: int = 0):
        self.total, self.unit, self.done = total, unit, done
        self.logger = logger or get_logger()
        self._start_done = done
        self._t0 = time.perf_counter()

    def update(self, n: int = 1, message: str = "") -> None:
        self.done += n
        elapsed = time.perf_counter() - self._t0
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else float("nan")
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        self.logger.info(
            "%s %d/%d (%.2f %s/s, ETA %s)%s",
            self.unit,
            self.done,
            self.total,
            rate,
            self.unit,
            _fmt_seconds(remaining),
            f" {message}" if message else "",
        )


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
