"""Scalars to a jsonl file and TensorBoard event files (written by process 0 only)."""

from __future__ import annotations

import json
import math
import os

import jax

from retformer_jax import atomic_io


class MetricWriter:
  def __init__(self, logdir: str, jsonl_name: str = "metrics.jsonl"):
    self.logdir = logdir
    self.path = os.path.join(logdir, jsonl_name)
    self._active = jax.process_index() == 0
    self._tb = None
    if self._active:
      os.makedirs(logdir, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir)

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (a run resumed from that step writes them again)."""
    if not self._active or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= step]
    atomic_io.write_text(self.path, "".join(lines))

  def write(self, step: int, scalars: dict, prefix: str = "") -> None:
    if not self._active:
      return
    record = {"step": int(step)}
    for k, v in scalars.items():
      v = None if v is None else float(v)
      record[prefix + k] = None if v is None or not math.isfinite(v) else v
      if v is not None:
        self._tb.add_scalar(prefix + k, v, int(step))
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
