"""Progress lines with a rate and an ETA for long loops, quiet for short ones.

A log line (not a terminal bar) so that it reads the same in a SLURM log, a TPU worker's
stderr and a terminal: nothing in the first `quiet_s` seconds, then one line at most every
`every_s` seconds, and a closing line if anything was printed.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("retformer_jax")


def eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class Progress:
  """`update(n)` after each unit of work; `done()` at the end."""

  def __init__(self, what: str, total: int, unit: str = "items", *, quiet_s: float = 5.0,
               every_s: float = 10.0, clock=time.monotonic, logger: logging.Logger = log):
    self.what, self.total, self.unit = what, int(total), unit
    self._quiet_s, self._every_s, self._clock, self._log = quiet_s, every_s, clock, logger
    self._t0 = self._last = clock()
    self.count = 0
    self.printed = False

  def update(self, n: int = 1) -> None:
    self.count += n
    now = self._clock()
    if now - self._t0 >= self._quiet_s and now - self._last >= self._every_s:
      self._last = now
      self.printed = True
      rate = self.count / max(now - self._t0, 1e-9)
      self._log.info("%s: %d/%d %s (%.1f %s/s, ETA %s)", self.what, self.count, self.total,
                     self.unit, rate, self.unit, eta((self.total - self.count) / max(rate, 1e-9)))

  def done(self) -> None:
    if self.printed:
      self._log.info("%s: %d/%d %s in %s", self.what, self.count, self.total, self.unit,
                     eta(self._clock() - self._t0))
