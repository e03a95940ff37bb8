"""Stage `zeroshot`: prompts, top-k by cosine similarity, and the stage end to end on the demo."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from retformer_jax.stages import zeroshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_classify_matches_a_full_sort():
  rng = np.random.default_rng(0)
  img = rng.standard_normal((37, 8)).astype(np.float16)
  txt = rng.standard_normal((11, 8)).astype(np.float32)
  top = zeroshot.classify(img, txt, k=5, chunk=10)
  want = np.argsort(-(img.astype(np.float32) @ txt.T), axis=1, kind="stable")[:, :5]
  np.testing.assert_array_equal(top, want)
  assert zeroshot.classify(img, txt[:3], k=5).shape == (37, 3)


def test_prompts():
  assert zeroshot.class_prompts("a photo of a {name}.", ["sea_lion"]) == ["a photo of a sea lion."]
  with pytest.raises(ValueError, match="placeholder"):
    zeroshot.class_prompts("a photo", ["x"])


@pytest.mark.slow
def test_stage_writes_metrics_on_the_demo(tmp_path):
  args = ["--config=configs/demo.py", f"--workdir={tmp_path}", "--config.stages=('zeroshot',)",
          "--config.data.demo.num_classes=6", "--config.data.demo.max_per_class=20",
          "--config.data.demo.test_per_class=4", "--config.data.demo.val_per_class=2",
          "--config.eval.many_above=15", "--config.eval.few_below=5",
          "--config.embed.progress=False"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "retformer_jax.main", *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / "zeroshot" / "test" / "metrics.json") as f:
    m = json.load(f)
  assert m["num_examples"] == 24
  assert 0.0 <= m["top1"] <= 1.0 and m["top5"] is None
  assert "CLIP zero-shot, demo:test (24 examples)" in r.stdout
  # The store it built is the embed stage's: a rerun reuses it instead of embedding again.
  r2 = subprocess.run([sys.executable, "-m", "retformer_jax.main", *args], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=600)
  assert r2.returncode == 0 and "up to date" in r2.stderr
