"""SIGTERM (TPU preemption, SLURM's warning before a time limit) as a request to stop cleanly.

A handler records the signal; each stage asks at the points where its work is saved (a train
step, an embedding shard, a neighbours chunk, a RetLLM chunk) and raises `errors.Preempted`
there, so `main` runs no later stage. Across hosts the train loop uses JAX's preemption sync
point instead, so that every host stops after the same step (JAX installs its own SIGTERM
notifier when a job spans several processes; no Python handler is installed then).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

from retformer_jax import errors

log = logging.getLogger(__name__)

_state = {"requested": False, "installed": 0, "previous": None}
_lock = threading.Lock()


def _multi_process() -> bool:
  return jax.process_count() > 1


def _handle(signum, frame) -> None:
  if not _state["requested"]:
    log.warning("SIGTERM received: stopping at the next saved point.")
  _state["requested"] = True


@contextlib.contextmanager
def watching():
  """Installs the SIGTERM handler for the duration (nested uses share one handler).

  Only the main thread of a single-process job installs it; elsewhere this is a no-op.
  """
  install = (threading.current_thread() is threading.main_thread() and not _multi_process())
  if install:
    with _lock:
      if _state["installed"] == 0:
        _state["previous"] = signal.signal(signal.SIGTERM, _handle)
      _state["installed"] += 1
  try:
    yield
  finally:
    if install:
      with _lock:
        _state["installed"] -= 1
        if _state["installed"] == 0:
          signal.signal(signal.SIGTERM, _state["previous"] or signal.SIG_DFL)
          _state["previous"] = None


def requested() -> bool:
  """True once SIGTERM arrived in this process."""
  return _state["requested"]


def check(where: str) -> None:
  """Raises `errors.Preempted(where)` if SIGTERM arrived; call where the work is saved."""
  if _state["requested"]:
    raise errors.Preempted(where)


def reached(step: int) -> bool:
  """Train loop: stop after `step`? All hosts of a multi-process job agree on the answer."""
  if _multi_process():
    return bool(multihost_utils.reached_preemption_sync_point(step))
  return _state["requested"]


def reset() -> None:
  """Forgets a recorded SIGTERM (for code that runs several jobs in one process, e.g. tests)."""
  _state["requested"] = False
