"""The embed job as users run it (`python -m retformer_jax.main`), killed mid-way then rerun,
gives the store of an uninterrupted run, bit for bit."""

import os
import signal
import subprocess
import sys
import time

import pytest

from configs import demo as demo_config
from retformer_jax.kb import layout, store
from retformer_jax.stages import embed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    "data.demo.num_classes": 4, "data.demo.max_per_class": 40, "data.demo.imbalance": 1.5,
    "data.demo.test_per_class": 2, "data.demo.val_per_class": 1, "data.num_workers": 2,
    "clip.batch_size": 8, "embed.shard_size": 16, "data.eval_splits": ("test",),
}
FILES = ("image.npy", "text.npy", "ids.npy", "labels.npy", "source_index.npy", "captions.bin",
         "caption_offsets.npy")


def config():
  c = demo_config.get_config()
  for key, value in OVERRIDES.items():
    section, *rest = key.split(".")
    node = c[section]
    for part in rest[:-1]:
      node = node[part]
    node[rest[-1]] = value
  c.embed.progress = False
  return c


def command(workdir):
  args = [sys.executable, "-m", "retformer_jax.main", "--config=configs/demo.py",
          f"--workdir={workdir}", "--config.stages=('embed',)"]
  for key, value in OVERRIDES.items():
    args.append(f"--config.{key}={value!r}" if isinstance(value, tuple) else
                f"--config.{key}={value}")
  return args


def env(**extra):
  e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  e.update(JAX_PLATFORMS="cpu", **extra)
  return e


def assert_same_store(a, b):
  ma, mb = store.read_manifest(a), store.read_manifest(b)
  assert ma is not None and mb is not None
  for key in ("count", "fingerprint", "encoder", "shards", "skipped", "dim"):
    assert ma[key] == mb[key], key
  for f in FILES:
    with open(os.path.join(a, f), "rb") as fa, open(os.path.join(b, f), "rb") as fb:
      assert fa.read() == fb.read(), f


def reference_store(tmp_path):
  wd = str(tmp_path / "reference")
  embed.run(config(), wd)
  return wd


@pytest.mark.slow
def test_killed_then_resumed_equals_uninterrupted(tmp_path):
  ref = reference_store(tmp_path)
  wd = str(tmp_path / "killed")
  shards = os.path.join(layout.store_dir(wd, "demo:train"), "shards")
  proc = subprocess.Popen(command(wd), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(shards) and len(store.finished_shards(os.path.dirname(shards))) >= 2:
      os.killpg(proc.pid, signal.SIGKILL)
      break
    time.sleep(0.005)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
  proc.stderr.close()
  train_dir = layout.store_dir(wd, "demo:train")
  assert store.read_manifest(train_dir) is None  # really killed mid-way
  done_before = store.finished_shards(train_dir)
  assert 2 <= len(done_before) < 9
  out = subprocess.run(command(wd), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  for split in ("train", "test"):
    assert_same_store(layout.store_dir(ref, f"demo:{split}"), layout.store_dir(wd, f"demo:{split}"))
