"""RetFormer training in fresh processes: preemption (SIGTERM) and resume, restore on another
mesh, and two real processes (gloo on loopback) against one process with as many devices.
Each job is tests/retformer_worker.py on generated data.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import free_port

WORKER = pathlib.Path(__file__).with_name("retformer_worker.py")
TIMEOUT = 900


def _cmd(*args):
  return [sys.executable, str(WORKER), *map(str, args)]


def _run(*args):
  proc = subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _params(npz):
  return {k: npz[k] for k in npz.files if k.startswith("param/")}


def _assert_same_params(a, b, atol):
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys() and pa
  worst = max((float(np.abs(pa[k] - pb[k]).max()), k) for k in pa)
  assert worst[0] <= atol, worst


def _train_log(workdir):
  keys = ("loss", "accuracy", "grad_norm", "param_norm", "lr")
  with open(os.path.join(workdir, "train", "metrics.jsonl")) as f:
    return [{k: r[k] for k in ("step",) + keys} for r in map(json.loads, f)]


@pytest.mark.slow
def test_sigterm_mid_run_then_restart_matches_an_uninterrupted_run(tmp_path):
  ref, cut = tmp_path / "ref", tmp_path / "cut"
  _run("train", ref, "--epochs", 4)
  proc = subprocess.Popen(_cmd("train", cut, "--epochs", 4, "--sleep", 0.25),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  log = cut / "train" / "metrics.jsonl"
  deadline = time.time() + TIMEOUT
  while time.time() < deadline and proc.poll() is None:
    if log.exists() and len(log.read_text().splitlines()) >= 6:
      break
    time.sleep(0.1)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=TIMEOUT)
  assert proc.returncode == 75, err[-4000:]  # errors.EXIT_PREEMPTED
  assert "preempted at step" in err and "rerun the same command to resume" in err
  interrupted = np.load(cut / "out_train.npz")
  steps_total = int(np.load(ref / "out_train.npz")["step"])
  assert 6 <= int(interrupted["step"]) < steps_total
  _run("train", cut, "--epochs", 4)
  a, b = np.load(ref / "out_train.npz"), np.load(cut / "out_train.npz")
  assert int(b["step"]) == steps_total
  _assert_same_params(a, b, atol=1e-6)
  np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-6)
  assert float(a["top1"]) == float(b["top1"])
  la, lb = _train_log(ref), _train_log(cut)
  assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, steps_total + 1))
  for ra, rb in zip(la, lb):
    for k in ra:
      assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), (ra, rb)


@pytest.mark.slow
def test_restore_on_a_different_mesh(tmp_path):
  _run("train", tmp_path, "--devices", 8, "--mesh-model", 2, "--epochs", 2)
  ref = np.load(tmp_path / "out_train.npz")
  scale = float(np.abs(ref["logits"]).max())
  for devices, model, tag in ((1, 1, "d1"), (4, 2, "d4")):
    _run("eval", tmp_path, "--devices", devices, "--mesh-model", model, "--tag", tag)
    out = np.load(tmp_path / f"out_eval_{tag}.npz")
    assert int(out["step"]) == int(ref["step"])
    _assert_same_params(ref, out, atol=0.0)
    assert np.abs(out["logits"] - ref["logits"]).max() <= 1e-5 * max(scale, 1.0)
    metrics = json.loads((tmp_path / "eval" / tag / "metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(float(ref["top1"]))
    assert set(metrics) >= {"top1", "many", "medium", "few", "top5", "num_examples", "step"}


@pytest.mark.slow
def test_two_processes_with_gloo_match_one_process(tmp_path):
  port = free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      _cmd("train", multi, "--devices", 2, "--num-processes", 2, "--process-id", i, "--port",
           port, "--epochs", 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in (0, 1)]
  for p in procs:
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err[-4000:]
  _run("train", tmp_path / "single", "--devices", 4, "--epochs", 1)
  a, b = np.load(multi / "out_train.npz"), np.load(tmp_path / "single" / "out_train.npz")
  assert int(a["step"]) == int(b["step"]) > 0
  # Only the order of the cross-device gradient sums differs.
  _assert_same_params(a, b, atol=2e-6)
  scale = max(float(np.abs(b["logits"]).max()), 1.0)
  assert np.abs(a["logits"] - b["logits"]).max() <= 1e-4 * scale
