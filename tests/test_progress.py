"""Progress lines: silent for short loops, then a rate and an ETA at most every few seconds."""

from __future__ import annotations

import logging

from retformer_jax import progress


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_quiet_then_rate_and_eta(caplog):
  clock = _Clock()
  logger = logging.getLogger("test_progress")
  bar = progress.Progress("neighbours of test", 100, "chunks", quiet_s=5, every_s=10,
                          clock=clock, logger=logger)
  with caplog.at_level("INFO", logger="test_progress"):
    for _ in range(10):  # 10 chunks in 4 s: nothing printed yet
      clock.t += 0.4
      bar.update()
    assert not caplog.records
    clock.t = 10.0  # 20 chunks in 10 s -> 2/s, 80 left -> 40 s
    bar.update(10)
    assert caplog.records[-1].getMessage() == (
        "neighbours of test: 20/100 chunks (2.0 chunks/s, ETA 0m40s)")
    clock.t = 15.0
    bar.update(10)  # within every_s of the last line: silent
    assert len(caplog.records) == 1
    clock.t = 3700.0
    bar.update(1)
    assert "ETA" in caplog.records[-1].getMessage()
    bar.done()
    assert caplog.records[-1].getMessage() == "neighbours of test: 31/100 chunks in 1h01m"


def test_short_loops_print_nothing(caplog):
  clock = _Clock()
  logger = logging.getLogger("test_progress_short")
  bar = progress.Progress("x", 3, clock=clock, logger=logger)
  with caplog.at_level("INFO", logger="test_progress_short"):
    for _ in range(3):
      clock.t += 1
      bar.update()
    bar.done()
  assert not caplog.records
  assert progress.eta(59) == "0m59s" and progress.eta(7325) == "2h02m"
