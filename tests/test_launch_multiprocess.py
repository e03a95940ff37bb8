"""The whole demo pipeline as a 2-process job (gloo on loopback, 2 CPU devices each) through
launch/local_multiprocess.sh gives the results of a single-process run."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config=configs/demo.py", "--config.data.demo.num_classes=8",
         "--config.data.demo.max_per_class=60", "--config.data.demo.test_per_class=10",
         "--config.eval.many_above=30", "--config.eval.few_below=10", "--config.train.epochs=3",
         "--config.train.batch_size=32", "--config.neighbors.k=8", "--config.embed.progress=False"]

pytestmark = pytest.mark.slow  # two JAX processes plus a single-process run


def _metrics(workdir):
  with open(os.path.join(workdir, "eval", "test", "metrics.json")) as f:
    return json.load(f)


def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", NUM_PROCESSES="2", DEVICES_PER_PROCESS="2")
  multi = tmp_path / "multi"
  r = subprocess.run(["bash", "launch/local_multiprocess.sh", *SMALL, f"--workdir={multi}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  logs = "".join((multi / "logs" / f"process_{i}.log").read_text()[-2000:] for i in range(2))
  assert r.returncode == 0, r.stderr + logs
  single = tmp_path / "single"
  r = subprocess.run([sys.executable, "-m", "retformer_jax.main", *SMALL, f"--workdir={single}"],
                     cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  m1, m2 = _metrics(single), _metrics(multi)
  assert m1["num_examples"] == m2["num_examples"] == 80 and m1["step"] == m2["step"]
  assert abs(m1["top1"] - m2["top1"]) <= 1 / 80 + 1e-9, (m1, m2)
  # Both processes ran every stage and agree on what they printed.
  for i in range(2):
    assert "[eval demo:test]" in (multi / "logs" / f"process_{i}.log").read_text()
