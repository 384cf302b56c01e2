"""Progress of an epoch or an evaluation: a tqdm bar on a terminal, a plain line now and then elsewhere.

tqdm redraws its bar with carriage returns; written to a log file (nohup, torchrun's log dir, CI)
every redraw stays in the file. There a line every `every_s` seconds says the same thing.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_EVERY_S = 30.0


class LineProgress:
    """The part of tqdm's interface training uses (update, set_postfix, close), as plain lines."""

    def __init__(self, total: int, desc: str, every_s: float = LINE_EVERY_S, file=None):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.file = file or sys.stderr
        self.count, self.postfix = 0, {}
        self.start = self.last_line = time.monotonic()

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            fields = [f"{self.count}/{self.total}", f"{now - self.start:.0f} s"]
            fields += [f"{k} {v}" for k, v in self.postfix.items()]
            print(f"{self.desc}: " + ", ".join(fields), file=self.file, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool = True, every_s: float = LINE_EVERY_S):
    """tqdm when stderr is a terminal, else LineProgress; nothing shown when not `enabled` (other ranks)."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc, every_s)
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)
