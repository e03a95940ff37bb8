"""Real runs are never silently wrong: preemption stops the pipeline, changed inputs never reuse
old checkpoints, damaged checkpoints fall back, unfinished runs are never reported."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from retformer_jax import errors, preemption
from retformer_jax.stages import embed, evaluate, index, neighbors, train
from retformer_jax.train import checkpointing, run_record
from test_kb_stages import small_config


def _config():
  c = small_config()
  c.model.num_layers, c.model.num_heads, c.model.mlp_ratio = 1, 2, 2
  c.train.batch_size, c.train.epochs, c.train.lr, c.train.log_every = 16, 3, 1e-2, 100
  c.checkpoint.every_steps, c.checkpoint.async_save = 2, False
  c.eval.batch_size, c.eval.num_explained = 8, 0
  return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A workdir whose embed / index / neighbors stages are done (copied by each test)."""
  wd = str(tmp_path_factory.mktemp("prepared"))
  c = _config()
  for stage in (embed, index, neighbors):
    stage.run(c, wd)
  return wd


@pytest.fixture
def workdir(prepared, tmp_path):
  wd = str(tmp_path / "w")
  shutil.copytree(prepared, wd)
  return wd


def _metrics(wd, split="test"):
  path = os.path.join(wd, "eval", split, "metrics.json")
  return json.load(open(path)) if os.path.exists(path) else None


def _stop_after(monkeypatch, n):
  monkeypatch.setattr(preemption, "reached", lambda step: step >= n)


@pytest.mark.slow
def test_preempted_training_is_never_evaluated_and_resumes(workdir, monkeypatch):
  c = _config()
  with monkeypatch.context() as m:
    _stop_after(m, 3)
    with pytest.raises(errors.Preempted, match=r"preempted at step 3 of \d+"):
      train.run(c, workdir)
  record = run_record.read(os.path.join(workdir, "checkpoints"))
  assert record["finished"] is False
  with pytest.raises(run_record.UnfinishedTrainingError, match="has not finished training"):
    evaluate.run(c, workdir)
  assert _metrics(workdir) is None
  train.run(c, workdir)  # the same command resumes from step 3 and finishes
  assert run_record.read(os.path.join(workdir, "checkpoints"))["finished"] is True
  evaluate.run(c, workdir)
  m = _metrics(workdir)
  assert m["step"] == record["total_steps"]


@pytest.mark.slow
def test_changed_inputs_never_reuse_old_checkpoints(workdir):
  c = _config()
  train.run(c, workdir)
  evaluate.run(c, workdir)
  first = os.stat(os.path.join(workdir, "eval", "test", "metrics.json")).st_mtime_ns
  c.train.lr, c.train.loss = 3e-3, "ce"
  with pytest.raises(run_record.StaleCheckpointsError) as e:
    train.run(c, workdir)
  msg = str(e.value)
  assert "train.lr: 0.01 -> 0.003" in msg and 'train.loss: "lace" -> "ce"' in msg
  assert "changed_inputs=new_run" in msg and "\n" not in msg
  # Only settings that do not shape the model may differ on a rerun.
  c2 = _config()
  c2.train.log_every, c2.eval.batch_size, c2.checkpoint.keep_last = 7, 4, 3
  train.run(c2, workdir)
  # The documented switch: the old run moves aside, a fresh one trains, eval reports the new one.
  c.train.changed_inputs = "new_run"
  train.run(c, workdir)
  moved = os.listdir(os.path.join(workdir, "runs"))
  assert len(moved) == 1 and os.path.isdir(os.path.join(workdir, "runs", moved[0], "checkpoints"))
  record = run_record.read(os.path.join(workdir, "checkpoints"))
  assert record["inputs"]["train.lr"] == 3e-3 and record["finished"]
  evaluate.run(c, workdir)
  # Re-evaluated, not the cached result of the old model.
  assert os.stat(os.path.join(workdir, "eval", "test", "metrics.json")).st_mtime_ns != first
  inputs = json.load(open(os.path.join(workdir, "eval", "test", "inputs.json")))
  assert inputs["run"] == record["fingerprint"]


@pytest.mark.slow
def test_other_neighbours_are_a_changed_input(workdir):
  c = _config()
  train.run(c, workdir)
  c.index.backend = "faiss"
  c.index.faiss.factory = "Flat"
  index.run(c, workdir)
  neighbors.run(c, workdir)
  with pytest.raises(run_record.StaleCheckpointsError) as e:
    train.run(c, workdir)
  assert 'index.backend: "exact" -> "faiss"' in str(e.value)
  assert "neighbours of 'train'" in str(e.value)


@pytest.mark.slow
def test_eval_refuses_a_model_unlike_the_trained_one(workdir):
  c = _config()
  train.run(c, workdir)
  c.model.num_layers = 2
  with pytest.raises(run_record.StaleCheckpointsError, match="model.num_layers: 1 -> 2"):
    evaluate.run(c, workdir)


def _damage(step_dir):
  """Truncates every file of a checkpoint's state, as a half-copied folder would be."""
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back(workdir, monkeypatch, caplog):
  c = _config()
  c.checkpoint.keep_last = 5
  with monkeypatch.context() as m:
    _stop_after(m, 4)
    with pytest.raises(errors.Preempted):
      train.run(c, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) == [2, 4]
  _damage(os.path.join(ckpt_dir, "4"))
  # eval of an explicit step: the damaged one is an error, an older one works.
  c.checkpoint.step = 4
  with pytest.raises(checkpointing.NoGoodCheckpointError, match="step 4"):
    evaluate.run(c, workdir)
  c.checkpoint.step = -1
  with caplog.at_level("WARNING"):
    train.run(c, workdir)  # resumes from step 2, after one warning naming step 4
  assert any("step 4" in r.getMessage() and "cannot be restored" in r.getMessage()
             for r in caplog.records)
  assert os.listdir(os.path.join(workdir, "checkpoints.damaged"))[0].startswith("4-")
  assert run_record.read(ckpt_dir)["finished"]
  # eval: the latest is damaged too -> falls back to the newest good one.
  latest = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  _damage(os.path.join(ckpt_dir, str(latest)))
  caplog.clear()
  with caplog.at_level("WARNING"):
    evaluate.run(c, workdir)
  assert _metrics(workdir)["step"] < latest
  assert any(f"step {latest}" in r.getMessage() for r in caplog.records)
  for s in os.listdir(ckpt_dir):
    if s.isdigit():
      _damage(os.path.join(ckpt_dir, s))
  with pytest.raises(checkpointing.NoGoodCheckpointError, match="None of the checkpoints"):
    checkpointing.load_params(ckpt_dir)


def test_record_diff_lists_only_keys_that_changed():
  old = {"train.lr": 0.01, "model.num_layers": 1, "neighbours of 'train'": "a"}
  new = {"train.lr": 0.01, "model.num_layers": 2, "neighbours of 'train'": "b", "seed": 1}
  assert run_record.describe_changes(old, new) == [
      "model.num_layers: 1 -> 2", "neighbours of 'train' (KB, index or query store changed)",
      "seed: <unset> -> 1"]
  c = _config()
  keys = run_record.run_inputs(c, {"train": "x"})
  assert "train.lr" in keys and "model.num_layers" in keys and "seed" in keys
  assert not any(k.startswith(("mesh.", "eval.", "checkpoint.", "retllm.")) for k in keys)
  assert np.isclose(keys["train.lr"], c.train.lr)
