"""The RetFormer training loop over arrays (`QuerySet`s): resumable, preemption-safe.

Resumes from the newest checkpoint that restores (state + iterator position), so a run killed
at any moment and restarted ends with the same parameters as an uninterrupted one. The
checkpoint folder records what the run was made from (`run_record`): other inputs never resume
it silently. SIGTERM (TPU preemption) saves at the next step boundary and raises
`errors.Preempted`. A non-finite loss or gradient stops the run before anything is saved at
that step, so the last good checkpoints stay the latest. Validation is the caller's: an
`evaluate(params) -> {"top1", "many", "medium", "few", ...}` callback picks the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np
from absl import logging

from retformer_jax import errors, preemption, progress
from retformer_jax.parallel import hosts
from retformer_jax.train import checkpointing, input_pipeline, run_record
from retformer_jax.train import setup as setup_lib
from retformer_jax.train.metric_writer import MetricWriter

Evaluate = Callable[[object], dict]  # params -> accuracy report (top1, many, medium, few)


class NonFiniteError(errors.UserError, FloatingPointError):
  """The loss or the gradients stopped being finite; nothing was saved for that step."""


@dataclasses.dataclass(frozen=True)
class TrainData:
  train: input_pipeline.QuerySet
  train_counts: np.ndarray  # images per class in the training split
  # split -> fingerprint of the neighbours it trains / validates on (recorded with the run)
  neighbor_fingerprints: dict = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.train_counts)


def make_setup(config, data: TrainData) -> setup_lib.TrainSetup:
  """The run's setup (mesh, model, optimizer, shardings, step) for these training data."""
  return setup_lib.make(
      config, num_classes=data.num_classes, k=data.train.k, dim=data.train.image.shape[1],
      steps_per_epoch=input_pipeline.steps_per_epoch(data.train, config.train.batch_size),
      train_counts=data.train_counts)


def _check_finite(step: int, metrics: dict, ckpt: checkpointing.Checkpointer) -> dict:
  host = {k: float(v) for k, v in jax.device_get(metrics).items()}
  bad = [k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(host[k])]
  if bad:
    ckpt.wait()
    latest = ckpt.latest_step()
    saved = (f"the latest good checkpoint is step {latest} in {ckpt.directory}, which a rerun "
             "resumes from" if latest is not None else
             "no checkpoint was saved before it, so a rerun starts from the beginning")
    raise NonFiniteError(
        f"Training diverged at step {step}: {', '.join(f'{k}={host[k]}' for k in bad)}. Nothing "
        f"was saved for this step; {saved}. Lower --config.train.lr, keep "
        "--config.train.grad_clip > 0, or check the embeddings for NaN/inf.")
  return host


def train(config, workdir: str, data: TrainData, *, evaluate: Evaluate | None = None,
          setup: setup_lib.TrainSetup | None = None) -> dict | None:
  """Trains (or resumes) to config.train.epochs; returns the last logged metrics.

  `evaluate(params)` runs every config.train.eval_every_epochs epochs and its top-1 picks the
  best checkpoint; `setup` defaults to `make_setup(config, data)`. Raises `errors.Preempted`
  after saving when SIGTERM arrives, and `run_record.StaleCheckpointsError` when
  WORKDIR/checkpoints was trained from other inputs.
  """
  setup = make_setup(config, data) if setup is None else setup
  it = input_pipeline.TrainIterator(data.train, config.train.batch_size, config.seed,
                                    setup.batch_sharding)
  total = setup.total_steps
  ckpt_dir = os.path.join(workdir, "checkpoints")
  record = run_record.prepare(workdir, ckpt_dir,
                              run_record.run_inputs(config, data.neighbor_fingerprints), total,
                              config.train.changed_inputs, is_writer=jax.process_index() == 0)
  hosts.barrier("train-run-record")
  ckpt = checkpointing.Checkpointer(
      ckpt_dir, keep_last=config.checkpoint.keep_last,
      keep_best=config.checkpoint.keep_best, async_save=config.checkpoint.async_save)
  writer = MetricWriter(os.path.join(workdir, "train"))
  try:
    restored = ckpt.restore_newest_good(
        setup.abstract_state(), damaged_dir=os.path.join(workdir, "checkpoints.damaged"))
    if restored is not None:
      start, state, data_state = restored
      it.set_state(data_state)
      writer.truncate_after(start)
      logging.info("Resumed from step %d of %d (epoch %d, batch %d).", start, total, it.epoch,
                   it.position)
    else:
      start = 0
      state = setup.init_state(config.seed)
    if start >= total:
      logging.info("Training already finished (%d/%d steps).", start, total)
      if not record.get("finished") and jax.process_index() == 0:
        run_record.mark_finished(ckpt_dir, record, start)
      return None
    with preemption.watching():
      host = _loop(config, setup, it, ckpt, writer, evaluate, state, start)
    if jax.process_index() == 0:
      run_record.mark_finished(ckpt_dir, record, total)
    return host
  finally:
    it.close()
    ckpt.close()
    writer.close()


def _loop(config, setup: setup_lib.TrainSetup, it: input_pipeline.TrainIterator,
          ckpt: checkpointing.Checkpointer, writer: MetricWriter, evaluate: Evaluate | None,
          state, start: int):
  spe, total = setup.steps_per_epoch, setup.total_steps
  rng = jax.random.key(config.seed)
  tc, cc = config.train, config.checkpoint
  host, t0, t_step = None, time.time(), start
  for step in range(start, total):
    state, metrics = setup.step(state, next(it), rng)
    done = step + 1
    epoch_end = done % spe == 0
    do_val = (epoch_end and evaluate is not None and tc.eval_every_epochs > 0
              and (done // spe) % tc.eval_every_epochs == 0)
    stop = preemption.reached(done) and done < total
    do_save = done % cc.every_steps == 0 or done == total or do_val or stop
    if done % tc.log_every == 0 or do_save:
      host = _check_finite(done, metrics, ckpt)
      if done % tc.log_every == 0 or done == total:
        rate = (done - t_step) / max(time.time() - t0, 1e-9)
        t0, t_step = time.time(), done
        writer.write(done, dict(host, steps_per_s=rate, epoch=done / spe))
        logging.info("step %d/%d epoch %.2f loss %.4f acc %.3f grad_norm %.3f lr %.2e "
                     "(%.1f steps/s, ETA %s)", done, total, done / spe, host["loss"],
                     host["accuracy"], host["grad_norm"], host["lr"], rate,
                     progress.eta((total - done) / max(rate, 1e-9)))
    save_metrics = None
    if do_val:
      report = evaluate(state.params)
      save_metrics = {checkpointing.BEST_METRIC: report["top1"]}
      writer.write(done, {k: report[k] for k in ("top1", "many", "medium", "few")}, "val_")
      logging.info("step %d val top1 %.4f many %s medium %s few %s", done, report["top1"],
                   report["many"], report["medium"], report["few"])
    if do_save:
      ckpt.save(done, state, it.get_state(), metrics=save_metrics)
    if stop:
      ckpt.wait()
      raise errors.Preempted(f"step {done} of {total} (checkpoint saved in {ckpt.directory})")
  return host
