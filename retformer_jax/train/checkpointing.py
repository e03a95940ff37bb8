"""Checkpoints: orbax `CheckpointManager` with items `state` (sharded) and `data` (iterator).

Saves are asynchronous; the last `keep_last` steps and the `keep_best` by validation top-1 are
kept. Restores go straight into the target shardings, so a checkpoint written on one mesh loads
on any other. `load_params` reads only the parameters, for evaluation and for other JAX code.
"""

from __future__ import annotations

import logging as pylogging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = "val_top1"


class _OrbaxInfoFilter(pylogging.Filter):
  """Drops orbax's per-save INFO chatter (warnings and errors still pass)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno > pylogging.INFO or "orbax" not in record.pathname


def quiet_orbax_info_logs() -> None:
  logger = pylogging.getLogger("absl")
  if not any(isinstance(f, _OrbaxInfoFilter) for f in logger.filters):
    logger.addFilter(_OrbaxInfoFilter())


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
    quiet_orbax_info_logs()
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

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def resolve_step(ckpt_dir: str, step: int | None = None) -> int:
  """`step`, or the best step if one was recorded, else the latest."""
  mgr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "data"),
                              options=ocp.CheckpointManagerOptions(
                                  best_fn=lambda m: m[BEST_METRIC], best_mode="max",
                                  create=False, read_only=True))
  try:
    steps = list(mgr.all_steps())
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {ckpt_dir}; run the train stage first.")
    if step is None or step < 0:
      best = mgr.best_step()
      return int(best if best is not None else mgr.latest_step())
    if step not in steps:
      raise FileNotFoundError(f"Checkpoint step {step} not in {ckpt_dir}; available: {steps}.")
    return int(step)
  finally:
    mgr.close()


def load_params(ckpt_dir: str, step: int | None = None, target=None):
  """The parameters of a checkpoint, without the optimizer state.

  ckpt_dir: the `checkpoints` directory of a train run. step: None/-1 = best if any, else latest.
  target: optional pytree of ShapeDtypeStructs with shardings (e.g. `state.param_shardings`):
  the parameters are restored straight into them; without it they come back as numpy arrays.
  """
  quiet_orbax_info_logs()
  step = resolve_step(ckpt_dir, step)
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
