"""The entry point: config files load, overrides are checked, typos fail before any work."""

import os
import subprocess
import sys

import pytest

from retformer_jax import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "retformer_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, env=env)


def test_unknown_config_key_is_an_error(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train_lr=1e-4")
  assert r.returncode != 0
  assert "train_lr" in r.stderr


def test_wrong_type_is_an_error(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.seed=abc")
  assert r.returncode != 0
  assert "seed" in r.stderr


def test_unknown_stage_fails_before_work(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
            "--config.stages=('zeroshot','trian')")
  assert r.returncode != 0
  assert "trian" in r.stderr and "known stages" in r.stderr
  assert not (tmp_path / "w").exists()


def test_registry_lists_every_stage_in_order():
  assert list(stages.STAGES)[:6] == ["zeroshot", "embed", "index", "neighbors", "train", "eval"]
  with pytest.raises(stages.UnknownStageError):
    stages.check_names(["nope"])


def test_unknown_nested_key_suggests_the_right_one(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.data.demo.num_clases=3")
  assert r.returncode == 2
  assert "num_clases" in r.stderr and 'Did you mean "num_classes"' in r.stderr
  assert "Traceback" not in r.stderr


def test_missing_config_file(tmp_path):
  r = _main("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert r.returncode != 0
  assert "configs/nope.py" in r.stderr and "Traceback" not in r.stderr
