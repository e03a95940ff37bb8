"""`main` as a user meets it: one-line errors with exit status 2, the demo models refused on real
data, and SIGTERM ending the pipeline with status 75 and no evaluation of a half-trained model."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from configs import cifar100_lt, demo, retllm_demo, retllm_flickr30k
from retformer_jax import errors
from retformer_jax.stages import preflight

REPO = pathlib.Path(__file__).resolve().parents[1]


def _main(*args, timeout=300, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([sys.executable, "-m", "retformer_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, env=env)


def _error_lines(stderr: str) -> list[str]:
  """Lines main printed itself (absl log lines start with I/W/E + date)."""
  return [l for l in stderr.splitlines() if l.startswith(("ERROR ", "FATAL "))]


def test_demo_models_refused_on_real_data():
  with pytest.raises(errors.ConfigError, match=r"config\.clip\.path is empty") as e:
    preflight.check(cifar100_lt.get_config(), ("embed",))
  assert preflight.CLIP_DOWNLOAD in str(e.value)
  with pytest.raises(errors.ConfigError, match=r"config\.retllm\.model_path is empty") as e:
    preflight.check(retllm_flickr30k.get_config(), ("retllm",))
  assert preflight.QWEN_DOWNLOAD in str(e.value)
  c = retllm_flickr30k.get_config()
  c.retllm.model_path = "/some/qwen"
  with pytest.raises(errors.ConfigError, match=r"config\.clip\.path is empty"):
    preflight.check(c, ("retllm",))
  # The demos keep their generated weights; real paths pass.
  preflight.check(demo.get_config(), tuple(demo.get_config().stages))
  preflight.check(retllm_demo.get_config(), ("retllm",))
  c = cifar100_lt.get_config()
  c.clip.path = "/some/clip"
  preflight.check(c, tuple(c.stages))
  # The commands quoted in the error are the README's.
  readme = (REPO / "README.md").read_text()
  assert preflight.CLIP_DOWNLOAD in readme and preflight.QWEN_DOWNLOAD in readme


@pytest.mark.slow
def test_real_config_without_weights_stops_before_any_stage(tmp_path):
  r = _main("--config=configs/cifar100_lt.py", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == errors.EXIT_USAGE, r.stderr[-2000:]
  lines = _error_lines(r.stderr)
  assert len(lines) == 1 and "config.clip.path" in lines[0] and "huggingface-cli" in lines[0]
  assert "Traceback" not in r.stderr and "=== stage" not in r.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (("--config.stages=('embed',)", "--config.kb.sources=('downstream','web=wds:')"),
     "'wds:'"),
    (("--config.stages=('zeroshot',)", "--config.clip.path=/nonexistent/clip"),
     "/nonexistent/clip"),
])
def test_user_mistakes_are_one_line_and_verbose_shows_the_traceback(tmp_path, args, needle):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", *args)
  assert r.returncode == errors.EXIT_USAGE, r.stderr[-2000:]
  lines = _error_lines(r.stderr)
  assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr and "--verbose" in lines[0]
  assert "=== stage" not in r.stderr or "zeroshot" in args[0]  # specs are checked up front
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", *args, "--verbose")
  assert r.returncode == errors.EXIT_USAGE and "Traceback" in r.stderr


@pytest.mark.slow
def test_unknown_stage_is_one_line(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
            "--config.stages=('embed','trian')")
  assert r.returncode == errors.EXIT_USAGE
  assert len(_error_lines(r.stderr)) == 1 and "trian" in r.stderr
  assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


def _demo_args(workdir):
  return ["--config=configs/demo.py", f"--workdir={workdir}",
          "--config.data.demo.num_classes=4", "--config.data.demo.max_per_class=24",
          "--config.data.demo.imbalance=3.0", "--config.data.demo.test_per_class=3",
          "--config.data.demo.val_per_class=1", "--config.embed.progress=False",
          "--config.neighbors.k=4", "--config.train.batch_size=16", "--config.train.epochs=40",
          "--config.checkpoint.every_steps=1000",
          "--config.stages=('embed','index','neighbors','train','eval')"]


@pytest.mark.slow
def test_sigterm_during_train_stops_the_pipeline_and_a_rerun_finishes(tmp_path):
  wd = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "retformer_jax.main", *_demo_args(wd)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env)
  seen = ""
  deadline = time.time() + 600
  while time.time() < deadline and "=== stage train ===" not in seen:
    line = proc.stderr.readline()
    if not line:
      break
    seen += line
  assert "=== stage train ===" in seen, seen[-3000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  err = seen + err
  assert proc.returncode == errors.EXIT_PREEMPTED, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert "preempted at step" in last and "rerun the same command to resume" in last, last
  assert "=== stage eval ===" not in err
  assert not list((wd / "eval").glob("*/metrics.json")) if (wd / "eval").exists() else True
  r = _main(*_demo_args(wd))  # the same command resumes and finishes
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from step" in r.stderr and (wd / "eval" / "test" / "metrics.json").exists()


@pytest.mark.parametrize("status,requeued", [(errors.EXIT_PREEMPTED, True), (1, False),
                                             (0, False)])
def test_slurm_job_requeues_itself_only_when_preempted(tmp_path, status, requeued):
  """launch/slurm_gpu.sbatch: main's status 75 (preempted, saved) -> `scontrol requeue`;
  a failure or success is passed on as it is."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  log = tmp_path / "scontrol.args"
  for name, body in (("srun", f"exit {status}\n"), ("scontrol", f'echo "$@" > {log}\n')):
    (bindir / name).write_text("#!/usr/bin/env bash\n" + body)
    (bindir / name).chmod(0o755)
  env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
  r = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "--config=configs/demo.py",
                      "--workdir=/tmp/x"], cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == status
  assert log.exists() == requeued
  if requeued:
    assert log.read_text().split() == ["requeue", "4242"]
