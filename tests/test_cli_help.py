"""The CLI explains itself: `--help` lists the stages with one line each and points to
configs/common.py; `--list_keys` prints every config key with its default and its comment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import main_in_process
from configs import common
from retformer_jax import config_keys, main, stages


def _leaf_keys(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _leaf_keys(value, f"{prefix}{key}.")
    else:
      yield prefix + key


def test_usage_lists_every_stage_with_its_line():
  text = main.usage()
  assert set(stages.SUMMARIES) == set(stages.STAGES)
  for name in stages.STAGES:
    line = next(l for l in text.splitlines() if l.strip().startswith(name + " "))
    assert stages.SUMMARIES[name] in line
  assert "configs/common.py" in text and "--list_keys" in text
  assert "retformer_jax.predict" in text


def test_comments_become_docs():
  docs = config_keys.docs(config_keys.find_common())
  assert docs["data.root"].startswith("image_folder: DIR holding train/")
  assert docs["data.tfds_name"].startswith("tfds: any prepared")
  assert docs["mesh.axis_rules"].startswith("Logical axis name -> mesh axis")  # comment above
  assert docs["mesh"].startswith("Device mesh.")  # a section's comment
  assert "missing_caption" in docs["embed.missing_caption"]  # a block of several lines
  assert docs["train.epochs"] == "passes over the training split"  # a trailing comment
  assert list(docs)[:3] == ["seed", "stages", "mesh"]  # file order


def test_list_keys_prints_every_key_with_its_default(monkeypatch, capsys):
  code, out, err = main_in_process.run(monkeypatch, capsys, "--list_keys")
  assert code == 0, err
  lines = out.splitlines()
  for key in _leaf_keys(common.get_config()):
    assert any(l.startswith(f"{key} = ") for l in lines), key
  assert "data.root = ''  # image_folder: DIR holding train/" in out
  assert "[mesh]  Device mesh." in out
  assert "configs/common.py" in lines[0]


def test_list_keys_shows_the_defaults_of_the_config_given(monkeypatch, capsys):
  code, out, err = main_in_process.run(monkeypatch, capsys, "--list_keys",
                                       "--config=configs/demo.py", "--config.train.lr=0.5")
  assert code == 0, err
  assert "data.name = 'demo'" in out and "train.lr = 0.5" in out
  assert "index.backend = 'exact'" in out  # demo.py's own value


def test_missing_flags_say_what_is_needed(monkeypatch, capsys):
  code, _, err = main_in_process.run(monkeypatch, capsys, "--config=configs/demo.py")
  assert code == 1 and "--workdir required" in err


@pytest.mark.slow
def test_help_from_the_command_line():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "retformer_jax.main", "--help"], capture_output=True,
                     text=True, cwd=main_in_process.REPO, env=env, timeout=120)
  assert r.returncode == 0, r.stderr
  for name, line in stages.SUMMARIES.items():
    assert f"{name}" in r.stdout and line in r.stdout
  assert "configs/common.py" in r.stdout and "--list_keys" in r.stdout
  r = subprocess.run([sys.executable, "-m", "retformer_jax.main", "--list_keys"],
                     capture_output=True, text=True, cwd=main_in_process.REPO, env=env,
                     timeout=120)
  assert r.returncode == 0 and "data.tfds_name = ''" in r.stdout


def test_every_key_has_a_doc():
  """--list_keys promises a one-line doc for every key: a key added without one fails here."""
  path = config_keys.find_common()
  docs = config_keys.docs(path)
  leaves = config_keys._leaves(config_keys.load_common(path))
  assert [k for k in leaves if not docs.get(k)] == []
