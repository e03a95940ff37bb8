"""The retllm stage as a 2-process job (gloo on loopback, 2 CPU devices each, pairs split over
each process's `data` axis) through launch/local_multiprocess.sh: killed after some chunks,
rerun, it scores only the missing chunks and writes the metrics of a 1-process, 1-device run.
Also: the scorer on a data=2 mesh gets its batches split over `data` and scores as on 1 device."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config=configs/retllm_demo.py", "--config.retllm.num_images=12",
         "--config.retllm.num_queries=8", "--config.retllm.top_k=3",
         "--config.retllm.chunk_size=1"]
NUM_CHUNKS = 8 + 8  # 8 queries per direction, one per chunk


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", **extra)
  return env


def _chunk_files(workdir):
  """{path: inode} of every saved chunk."""
  root = os.path.join(workdir, "retllm", "demo", "scores")
  found = {}
  for folder, _, files in os.walk(root):
    for f in files:
      if f.startswith("chunk_") and f.endswith(".npz"):
        path = os.path.join(folder, f)
        found[path] = os.stat(path).st_ino
  return found


def _launch(workdir):
  return subprocess.Popen(["bash", "launch/local_multiprocess.sh", *SMALL, f"--workdir={workdir}"],
                          cwd=REPO, env=_env(NUM_PROCESSES="2", DEVICES_PER_PROCESS="2"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)


def _logs(workdir):
  return [open(os.path.join(workdir, "logs", f"process_{i}.log")).read() for i in range(2)]


def _metrics(workdir):
  with open(os.path.join(workdir, "retllm", "demo", "metrics.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_two_processes_resume_and_match_one(tmp_path):
  multi = str(tmp_path / "multi")
  job = _launch(multi)
  deadline = time.time() + 300
  while time.time() < deadline and job.poll() is None and len(_chunk_files(multi)) < 3:
    time.sleep(0.05)
  if job.poll() is None:
    os.killpg(job.pid, signal.SIGKILL)
  job.wait()
  before = _chunk_files(multi)
  assert job.returncode == -signal.SIGKILL, "".join(log[-3000:] for log in _logs(multi))
  assert 0 < len(before) < NUM_CHUNKS, f"kill landed after {len(before)} chunks"
  assert not os.path.exists(os.path.join(multi, "retllm", "demo", "metrics.json"))

  job = _launch(multi)
  _, err = job.communicate(timeout=300)
  logs = _logs(multi)
  assert job.returncode == 0, err + "".join(log[-3000:] for log in logs)
  after = _chunk_files(multi)
  assert len(after) == NUM_CHUNKS
  assert all(after[p] == ino for p, ino in before.items())  # finished chunks left as they were
  redone = sum(log.count("done, ") for log in logs)
  assert redone == NUM_CHUNKS - len(before)
  assert all(f"[process {i}/2]" in logs[i] for i in range(2))  # both processes scored
  assert "retllm Recall@k" in logs[0] and "retllm Recall@k" not in logs[1]  # 0 writes
  assert "process 0 writes the metrics" in logs[1]

  single = str(tmp_path / "single")
  r = subprocess.run([sys.executable, "-m", "retformer_jax.main", *SMALL, f"--workdir={single}"],
                     cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  m1, m2 = _metrics(single), _metrics(multi)
  assert m1.pop("scores") != m2.pop("scores")  # each workdir keys its own scores
  assert m1 == m2


_DATA_PARALLEL = r"""
import sys
import jax
import numpy as np
from configs import common
from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.retllm import scorer

corpus = ["a red fox jumps over the fence", "two dogs play in the snow", "a man rides a bike"]
folder = demo_qwen.build_demo_qwen(sys.argv[1], corpus, min_pixels=8 * 784, max_pixels=16 * 784)
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (60 + 20 * i, 100, 3), dtype=np.uint8) for i in range(3)]
pairs = [(0, 0), (0, 1), (1, 1), (2, 0), (2, 2)]  # 3 images: odd batches, padded to even
cfg = common.get_config().mesh
cfg.data, cfg.model = 2, 1
kw = dict(floor_decimals=None, batch_size=3)
one = scorer.PairScorer.from_folder(folder, **kw)
two = scorer.PairScorer.from_folder(folder, mesh=mesh_lib.make_mesh(cfg),
                                    axis_rules=mesh_lib.axis_rules(cfg), **kw)
calls, run = [], two._run

def spy(name, *args):
  data = jax.sharding.PartitionSpec("data")
  split = [a for a in args if isinstance(a, jax.Array) and a.sharding.spec == data]
  calls.append((name, [a.shape[0] for a in split]))
  return run(name, *args)

two._run = spy
a, b = one.score_pairs(images, corpus, pairs), two.score_pairs(images, corpus, pairs)
np.testing.assert_allclose(b.p_true, a.p_true, rtol=1e-5, atol=1e-7)
np.testing.assert_allclose(b.entropy, a.entropy, rtol=1e-5, atol=1e-6)
batched = [rows for name, rows in calls if name != "vision"]
assert batched and all(rows and all(r % 2 == 0 for r in rows) for rows in batched), calls
print("DATA_PARALLEL_OK")
"""


@pytest.mark.slow
def test_scorer_batches_split_over_data_axis(tmp_path):
  r = subprocess.run([sys.executable, "-c", _DATA_PARALLEL, str(tmp_path / "qwen")], cwd=REPO,
                     env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                              PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
  assert "DATA_PARALLEL_OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.slow
def test_mixed_family_two_processes_match_one(tmp_path):
  """MMEB (mixed items, two subsets) as 2 processes x 1 device: chunks split c mod 2 over the
  subsets, process 0 alone writes, and the metrics are those of one process."""
  args = ["--config=configs/retllm_demo.py", "--config.retllm.dataset=mmeb",
          "--config.retllm.subsets=OK-VQA,MSCOCO", "--config.retllm.num_images=8",
          "--config.retllm.num_queries=4", "--config.retllm.top_k=3",
          "--config.retllm.chunk_size=1"]
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  job = subprocess.run(["bash", "launch/local_multiprocess.sh", *args, f"--workdir={multi}"],
                       cwd=REPO, env=_env(NUM_PROCESSES="2", DEVICES_PER_PROCESS="1"),
                       capture_output=True, text=True, timeout=600)
  logs = _logs(multi)
  assert job.returncode == 0, job.stderr[-2000:] + "".join(log[-3000:] for log in logs)
  done = [log.count("done, ") for log in logs]
  assert done == [4, 4]  # 8 chunks (4 queries x 2 subsets), numbered on across the subsets
  assert "retllm hit@1" in logs[0] and "retllm hit@1" not in logs[1]
  r = subprocess.run([sys.executable, "-m", "retformer_jax.main", *args, f"--workdir={single}"],
                     cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(multi, "retllm", "mmeb", "metrics.json")) as f:
    m2 = json.load(f)
  with open(os.path.join(single, "retllm", "mmeb", "metrics.json")) as f:
    m1 = json.load(f)
  assert m1 == m2 and "hit1_grounding" in m1
