"""Checkpoints: orbax `CheckpointManager` with items `state` (sharded) and `data` (iterator).

Saves are asynchronous; the last `keep_last` steps and the `keep_best` by validation top-1 are
kept. Restores go straight into the target shardings, so a checkpoint written on one mesh loads
on any other. A checkpoint that cannot be restored (a truncated copy, a crash mid-write on a
file system without atomic renames) is reported in one line and the next newest is used.
`load_params` reads only the parameters, for evaluation and for other JAX code.
"""

from __future__ import annotations

import logging as pylogging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from retformer_jax import errors
from retformer_jax.parallel import hosts

BEST_METRIC = "val_top1"
log = pylogging.getLogger(__name__)


class NoGoodCheckpointError(errors.UserError):
  """Checkpoints exist but none of them can be restored."""


class _OrbaxChatterFilter(pylogging.Filter):
  """Drops orbax's INFO and WARNING records (per-save chatter, read-only notices, metrics
  bookkeeping); its errors pass, and restore failures are reported by us in one line."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno > pylogging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logs() -> None:
  for name in ("absl", "orbax"):
    logger = pylogging.getLogger(name)
    if not any(isinstance(f, _OrbaxChatterFilter) for f in logger.filters):
      logger.addFilter(_OrbaxChatterFilter())


def _report_damaged(ckpt_dir: str, step: int, error: BaseException) -> None:
  log.warning("Checkpoint step %d in %s cannot be restored (%s: %s); trying an older one.",
              step, ckpt_dir, type(error).__name__, errors.one_line(error)[:200])


class Checkpointer:
  def __init__(self, directory: str, *, keep_last: int = 2, keep_best: int = 1,
               async_save: bool = True):
    if keep_last < 1:
      raise ValueError("config.checkpoint.keep_last must be >= 1.")
    keep = [policies.LatestN(n=keep_last)]
    if keep_best > 0:
      keep.append(policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False,
                                 n=keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, create=True,
        preservation_policy=policies.AnyPreservationPolicy(keep),
        best_fn=lambda m: m[BEST_METRIC], best_mode="max")
    quiet_orbax_logs()
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, metrics: dict | None = None) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state))
    self.manager.save(step, args=args, metrics=metrics, force=True)

  def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
    """The state in the shardings of `abstract_state` (ShapeDtypeStructs) and the iterator state."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out.state, dict(out.data)

  def restore_newest_good(self, abstract_state, damaged_dir: str | None = None):
    """(step, state, iterator state) of the newest checkpoint that restores; None if there are
    no checkpoints. Each newer one that fails is reported in one line and, once an older one
    restored and `damaged_dir` is given, moved there so that new saves can take its step."""
    steps = sorted(self.all_steps(), reverse=True)
    bad = []
    for step in steps:
      try:
        state, data_state = self.restore(step, abstract_state)
      except Exception as e:  # orbax raises many types for missing / truncated files
        _report_damaged(self.directory, step, e)
        bad.append(step)
        continue
      if bad and damaged_dir:
        if jax.process_index() == 0:
          os.makedirs(damaged_dir, exist_ok=True)
          for b in bad:
            dest = os.path.join(damaged_dir, f"{b}-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(os.path.join(self.directory, str(b)), dest)
            log.warning("Moved damaged checkpoint step %d to %s.", b, dest)
        hosts.barrier("checkpoints-set-aside")
        self.manager.reload()
      return step, state, data_state
    if steps:
      raise NoGoodCheckpointError(
          f"None of the checkpoints in {self.directory} (steps {sorted(steps)}) can be "
          "restored; move the folder away to train afresh.")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _read_only_manager(ckpt_dir: str):
  quiet_orbax_logs()
  return ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "data"),
                               options=ocp.CheckpointManagerOptions(
                                   best_fn=lambda m: m[BEST_METRIC], best_mode="max",
                                   create=False, read_only=True))


def candidate_steps(ckpt_dir: str, step: int | None = None) -> list[int]:
  """Steps to try in order: `step` alone if given (>= 0); else the best recorded step, then
  the others from the newest down."""
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}; run the train stage first.")
  mgr = _read_only_manager(ckpt_dir)
  try:
    steps = sorted((int(s) for s in mgr.all_steps()), reverse=True)
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {ckpt_dir}; run the train stage first.")
    if step is not None and step >= 0:
      if step not in steps:
        raise FileNotFoundError(
            f"Checkpoint step {step} not in {ckpt_dir}; available: {sorted(steps)}.")
      return [int(step)]
    best = mgr.best_step()
    first = [int(best)] if best is not None else []
    return first + [s for s in steps if s not in first]
  finally:
    mgr.close()


def resolve_step(ckpt_dir: str, step: int | None = None) -> int:
  """`step`, or the best step if one was recorded, else the latest."""
  return candidate_steps(ckpt_dir, step)[0]


def _load_params_at(ckpt_dir: str, step: int, target):
  path = os.path.join(os.path.abspath(ckpt_dir), str(step), "state")
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  params_meta = tree["params"]
  if target is None:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_meta)
    item = jax.tree.map(lambda m: np.zeros((), np.float32), params_meta)
  else:
    restore_args = jax.tree.map(
        lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape, dtype=t.dtype),
        target)
    item = target
  out = ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item={"params": item}, restore_args={"params": restore_args}, partial_restore=True))
  return out["params"]


def load_params_with_step(ckpt_dir: str, step: int | None = None, target=None):
  """(step, params): `load_params`, and the step that was actually restored."""
  quiet_orbax_logs()
  steps = candidate_steps(ckpt_dir, step)
  for s in steps:
    try:
      return s, _load_params_at(ckpt_dir, s, target)
    except Exception as e:  # orbax raises many types for missing / truncated files
      if step is not None and step >= 0:
        raise NoGoodCheckpointError(
            f"Checkpoint step {s} in {ckpt_dir} cannot be restored ({type(e).__name__}: "
            f"{errors.one_line(e)[:200]}).") from e
      _report_damaged(ckpt_dir, s, e)
  raise NoGoodCheckpointError(
      f"None of the checkpoints in {ckpt_dir} (steps {sorted(steps)}) can be restored.")


def load_params(ckpt_dir: str, step: int | None = None, target=None):
  """The parameters of a checkpoint, without the optimizer state.

  ckpt_dir: the `checkpoints` directory of a train run. step: None/-1 = best if any, else the
  latest (one that cannot be restored is reported and the next newest used); >= 0 that step.
  target: optional pytree of ShapeDtypeStructs with shardings (e.g. `state.param_shardings`):
  the parameters are restored straight into them; without it they come back as numpy arrays.
  """
  return load_params_with_step(ckpt_dir, step, target)[1]
