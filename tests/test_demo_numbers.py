"""The README's demo table is what the quick-start command prints: the whole pipeline through
`main`, then the MLP-only ablation in its own workdir. A change that moves a number (a
refactor that was meant to be behaviour-neutral, a changed default) fails here."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _readme_row(label: str) -> list[float]:
  for line in (REPO / "README.md").read_text().splitlines():
    if line.startswith(f"| {label}"):
      return [float(x) for x in re.findall(r"\d+\.\d+", line.split("|", 2)[2])]
  raise AssertionError(f"README has no demo table row {label!r}")


def _run(workdir, *overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "retformer_jax.main", "--config=configs/demo.py",
                      f"--workdir={workdir}", *overrides], cwd=REPO, capture_output=True,
                     text=True, timeout=900, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.loads((pathlib.Path(workdir) / "eval" / "test" / "metrics.json").read_text())
  return [round(100 * m[k], 2) for k in ("top1", "many", "medium", "few")]


@pytest.mark.slow
def test_quick_start_prints_the_readme_numbers(tmp_path):
  retrieval = _run(tmp_path / "demo")
  assert retrieval == _readme_row("RetFormer (retrieval, image + text)")
  # The ablation as the README gives it: its own workdir (the embeddings are reused here).
  shutil.copytree(tmp_path / "demo" / "store", tmp_path / "mlp" / "store")
  shutil.copytree(tmp_path / "demo" / "demo_clip", tmp_path / "mlp" / "demo_clip")
  mlp = _run(tmp_path / "mlp", "--config.model.use_retrieval=False",
             "--config.stages=('embed','index','neighbors','train','eval')")
  assert mlp == _readme_row("MLP only")
  assert retrieval[3] > mlp[3] + 15  # the paper's point: retrieval lifts the Few classes
