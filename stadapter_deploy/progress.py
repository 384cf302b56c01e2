"""Progress of long work: a tqdm bar on a terminal, a plain line now and then elsewhere.

tqdm redraws its bar with carriage returns; written to a log file (nohup, torchrun's log dir, CI)
every redraw stays in the file. There a line every `every_s` seconds says the same thing: done of
total, rate, ETA. Used by training, the exporter, the list checker, the synthetic data and predict.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_EVERY_S = 30.0


class LineProgress:
    """The part of tqdm's interface this package uses (update, set_postfix[_str], close), as plain lines."""

    def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = LINE_EVERY_S, file=None):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.file = file or sys.stderr
        self.count, self.postfix = 0, ""
        self.start = self.last_line = time.monotonic()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last_line >= self.every_s or (self.total and self.count >= self.total):
            self.last_line = now
            self.print_line(now)

    def print_line(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        fields = [f"{self.count}/{self.total} {self.unit}", f"{elapsed:.0f} s", f"{rate:.2f} {self.unit}/s"]
        if rate > 0 and self.total and self.count < self.total:
            fields.append(f"ETA {(self.total - self.count) / rate:.0f} s")
        if self.postfix:
            fields.append(self.postfix)
        print(f"{self.desc}: " + ", ".join(fields), file=self.file, flush=True)

    def close(self) -> None:
        pass


def progress_bar(
    total: int, desc: str, enabled: bool = True, every_s: float = LINE_EVERY_S, unit: str = "it", **tqdm_kwargs
):
    """tqdm when stderr is a terminal, else LineProgress; nothing shown when not `enabled` (other ranks)."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc, unit, every_s)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **tqdm_kwargs)
