"""The RetFormer training loop over arrays (`QuerySet`s): resumable, preemption-safe.

Resumes from the newest checkpoint that restores (state + iterator position), so a run killed
at any moment and restarted ends with the same parameters as an uninterrupted one. The
checkpoint folder records what the run was made from (`run_record`): other inputs never resume
it silently. SIGTERM (TPU preemption) saves at the next step boundary and raises
`errors.Preempted`. A non-finite loss or gradient stops the run before anything is saved at
that step, so the last good checkpoints stay the latest.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from retformer_jax import errors, preemption, progress
from retformer_jax.evaluation import metrics as metrics_lib
from retformer_jax.evaluation import predict as predict_lib
from retformer_jax.models import retformer
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.train import checkpointing, input_pipeline, losses, run_record
from retformer_jax.train import state as state_lib
from retformer_jax.train import step as step_lib
from retformer_jax.train.metric_writer import MetricWriter


class NonFiniteError(errors.UserError, FloatingPointError):
  """The loss or the gradients stopped being finite; nothing was saved for that step."""


@dataclasses.dataclass(frozen=True)
class TrainData:
  train: input_pipeline.QuerySet
  val: input_pipeline.QuerySet | None
  train_counts: np.ndarray  # images per class in the training split
  # split -> fingerprint of the neighbours it trains / validates on (recorded with the run)
  neighbor_fingerprints: dict = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.train_counts)


def build_model(config, num_classes: int) -> retformer.RetFormer:
  return retformer.RetFormer(retformer.ModelConfig.from_config(config.model, num_classes))


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


def evaluate_split(eval_step, params, data, config, train_counts, sharding) -> dict:
  top = predict_lib.predict(eval_step, params, data, config.eval.batch_size, sharding)
  return metrics_lib.accuracy_report(
      top, data.labels, train_counts, many_above=config.eval.many_above,
      few_below=config.eval.few_below, with_top5=config.eval.top5)


def train(config, workdir: str, data: TrainData) -> dict | None:
  """Trains (or resumes) to config.train.epochs; returns the last logged metrics.

  Raises `errors.Preempted` after saving when SIGTERM arrives, and
  `run_record.StaleCheckpointsError` when WORKDIR/checkpoints was trained from other inputs.
  """
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config.mesh)
  bsh = NamedSharding(mesh, P("data"))
  model = build_model(config, data.num_classes)
  it = input_pipeline.TrainIterator(data.train, config.train.batch_size, config.seed, bsh)
  spe = it.steps_per_epoch
  total = int(config.train.epochs * spe)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  record = run_record.prepare(workdir, ckpt_dir,
                              run_record.run_inputs(config, data.neighbor_fingerprints), total,
                              config.train.changed_inputs, is_writer=jax.process_index() == 0)
  _barrier("train-run-record")
  tx = state_lib.optimizer(config.train, spe)
  example = state_lib.example_inputs(config.train.batch_size, data.train.k,
                                     data.train.image.shape[1])
  shardings = state_lib.state_shardings(model, tx, example, mesh, rules)
  ckpt = checkpointing.Checkpointer(
      ckpt_dir, keep_last=config.checkpoint.keep_last,
      keep_best=config.checkpoint.keep_best, async_save=config.checkpoint.async_save)
  writer = MetricWriter(os.path.join(workdir, "train"))
  try:
    abstract = state_lib.abstract_state(model, tx, example, mesh, rules)
    restored = ckpt.restore_newest_good(
        abstract, damaged_dir=os.path.join(workdir, "checkpoints.damaged"))
    if restored is not None:
      start, state, data_state = restored
      it.set_state(data_state)
      writer.truncate_after(start)
      logging.info("Resumed from step %d of %d (epoch %d, batch %d).", start, total, it.epoch,
                   it.position)
    else:
      start = 0
      state = state_lib.create(model, tx, example, mesh, rules, config.seed)
    if start >= total:
      logging.info("Training already finished (%d/%d steps).", start, total)
      if not record.get("finished") and jax.process_index() == 0:
        run_record.mark_finished(ckpt_dir, record, start)
      return None
    log_prior = losses.log_prior(data.train_counts) if config.train.loss == "lace" else None
    step_fn = step_lib.jit_train_step(
        step_lib.train_step_fn(model, tx, step_lib.LossConfig.from_config(
            config.train, data.num_classes), log_prior, state_lib.schedule(config.train, spe)),
        mesh, rules, shardings)
    eval_step = step_lib.jit_eval_step(model, mesh, rules, shardings.params,
                                       topk=min(5, data.num_classes))
    run = _Run(config=config, data=data, it=it, step_fn=step_fn, eval_step=eval_step,
               batch_sharding=bsh, ckpt=ckpt, writer=writer, steps_per_epoch=spe, total=total)
    with preemption.watching():
      host = _loop(run, state, start)
    if jax.process_index() == 0:
      run_record.mark_finished(ckpt_dir, record, total)
    return host
  finally:
    it.close()
    ckpt.close()
    writer.close()


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


@dataclasses.dataclass
class _Run:
  """What the step loop needs besides the state: built once by `train`."""

  config: object
  data: TrainData
  it: input_pipeline.TrainIterator
  step_fn: object
  eval_step: object
  batch_sharding: NamedSharding
  ckpt: checkpointing.Checkpointer
  writer: MetricWriter
  steps_per_epoch: int
  total: int


def _loop(run: _Run, state, start: int):
  config, data, spe, total, ckpt, writer = (run.config, run.data, run.steps_per_epoch,
                                            run.total, run.ckpt, run.writer)
  rng = jax.random.key(config.seed)
  tc, cc = config.train, config.checkpoint
  host, t0, t_step = None, time.time(), start
  for step in range(start, total):
    state, metrics = run.step_fn(state, next(run.it), rng)
    done = step + 1
    epoch_end = done % spe == 0
    do_val = (epoch_end and data.val is not None and tc.eval_every_epochs > 0
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
      report = evaluate_split(run.eval_step, state.params, data.val, config, data.train_counts,
                              run.batch_sharding)
      save_metrics = {checkpointing.BEST_METRIC: report["top1"]}
      writer.write(done, {k: report[k] for k in ("top1", "many", "medium", "few")}, "val_")
      logging.info("step %d val top1 %.4f many %s medium %s few %s", done, report["top1"],
                   report["many"], report["medium"], report["few"])
    if do_save:
      ckpt.save(done, state, run.it.get_state(), metrics=save_metrics)
    if stop:
      ckpt.wait()
      raise errors.Preempted(f"step {done} of {total} (checkpoint saved in {ckpt.directory})")
  return host
