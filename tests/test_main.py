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


@pytest.mark.slow
def test_unknown_config_key_is_an_error(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train_lr=1e-4")
  assert r.returncode != 0
  assert "train_lr" in r.stderr


@pytest.mark.slow
def test_wrong_type_is_an_error(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.seed=abc")
  assert r.returncode != 0
  assert "seed" in r.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_unknown_nested_key_suggests_the_right_one(tmp_path):
  r = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.data.demo.num_clases=3")
  assert r.returncode == 2
  assert "num_clases" in r.stderr and 'Did you mean "num_classes"' in r.stderr
  assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_missing_config_file(tmp_path):
  r = _main("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert r.returncode != 0
  assert "configs/nope.py" in r.stderr and "Traceback" not in r.stderr


# In-process: main's flag parsing and `main.main` on fresh flag values, as
# `python -m retformer_jax.main ARGS` runs them (the fast tier; the subprocess tests above run
# the real command in the slow tier).

def _run_in_process(monkeypatch, capsys, *args):
  """(exit status, stderr) of main's flag parsing then `main.main`, on fresh flag values."""
  import copy

  from absl import app
  from absl import flags
  from ml_collections import config_flags

  from retformer_jax import main

  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  for flag in flags.FLAGS.get_flags_for_module(main.__name__):
    if flag.name != "config":  # the other flags main declares, unparsed
      fresh = copy.deepcopy(flag)
      fresh.unparse()
      values[flag.name] = fresh
  argv = ["retformer_jax.main", *args]
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(sys, "argv", argv)  # config overrides are read from sys.argv
  monkeypatch.setattr(main, "FLAGS", values)
  try:
    main.main(main._parse_flags(argv))
    code = 0
  except SystemExit as e:
    code = e.code or 0
  except app.UsageError as e:  # app.run prints it with the usage and exits with 1
    sys.stderr.write(str(e))
    code = 1
  return code, capsys.readouterr().err


def test_in_process_no_stages_is_done(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "w"
  code, err = _run_in_process(monkeypatch, capsys, "--config=configs/demo.py",
                              f"--workdir={workdir}", "--config.stages=()")
  assert code == 0, err
  assert workdir.is_dir() and not os.listdir(workdir)


def test_in_process_mistakes_exit_2_before_any_work(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "w"
  code, err = _run_in_process(monkeypatch, capsys, "--config=configs/demo.py",
                              f"--workdir={workdir}", "--config.stages=('zeroshot','trian')")
  assert code == 2 and "trian" in err and "Traceback" not in err
  code, err = _run_in_process(monkeypatch, capsys, "--config=configs/demo.py",
                              f"--workdir={workdir}", "--config.data.demo.num_clases=3")
  assert code == 2 and 'Did you mean "num_classes"' in err
  code, err = _run_in_process(monkeypatch, capsys, "--config=configs/nope.py",
                              f"--workdir={workdir}")
  assert code != 0 and "configs/nope.py" in err
  assert not workdir.exists()
