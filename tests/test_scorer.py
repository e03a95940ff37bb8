"""PairScorer: batched, prefix-cached scores equal one-pair-at-a-time full forwards."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from retformer_jax.models import qwen2_5_vl
from retformer_jax.models.qwen_injection import InjectionConfig
from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.retllm import scorer

# Full parity runs on a tiny Qwen2.5-VL built per module: the slow tier.
pytestmark = pytest.mark.slow

CORPUS = ["a red fox jumps over the fence", "two dogs play in the snow", "a man rides a bike",
          "children on a sunny beach"]
INJ = InjectionConfig(enabled=True, layer_lo=0, layer_hi=3)  # 4 layers: layers 2 or 3 armable


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("scorer") / "qwen")
  return demo_qwen.build_demo_qwen(path, CORPUS, min_pixels=8 * 784, max_pixels=16 * 784, seed=1)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, hw + (3,), dtype=np.uint8)
          for hw in ((90, 120), (140, 100), (100, 100))]


@functools.lru_cache(maxsize=None)
def _forward_fn(model, injection):
  return jax.jit(lambda params, pixels, arrays: model.apply(
      {"params": params}, pixel_values=pixels, injection=injection, output="last", **arrays,
      method="forward"))


def _one_pair(sc: scorer.PairScorer, image, caption, injection):
  """The reference's way: one full forward over the whole prompt, logits of the last position.

  Inputs are right-padded to fixed sizes (masked, so the valid positions are unchanged) to
  compile once."""
  patches, grid = sc.processor(image)
  ids = sc.prompter.pair_ids(caption, int(grid.prod()) // 4)
  T, N = 160, 256
  assert len(ids) <= T and len(patches) <= N
  padded = np.zeros((1, T), np.int32)
  padded[0, :len(ids)] = ids
  mask = np.zeros((1, T), np.int32)
  mask[0, :len(ids)] = 1
  arrays = qwen2_5_vl.prepare_inputs(sc.cfg, padded, grid[None], mask, injection,
                                     pad_patches_to=N)
  pixels = np.zeros((N, patches.shape[1]), np.float32)
  pixels[:len(patches)] = patches
  logits = _forward_fn(sc.model, injection)(sc.params, pixels, arrays)
  logits = np.asarray(logits[0], np.float64)
  p = np.exp(logits - logits.max())
  p /= p.sum()
  return p[sc.prompter.true_id], -np.sum(p * np.log(p + 1e-10))


def _check(res, pairs, expect):
  for n, key in enumerate(pairs):
    np.testing.assert_allclose(res.p_true[n], expect[key][0], atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(res.entropy[n], expect[key][1], atol=2e-5, rtol=1e-5)


def _scorer(folder, injection, batch_size=8, **kw):
  return scorer.PairScorer.from_folder(folder, injection=injection, batch_size=batch_size,
                                       prefix_bucket=128, suffix_bucket=64, **kw)


@pytest.mark.parametrize("injection", [None, INJ, InjectionConfig(
    enabled=True, layer_lo=0, layer_hi=3, memory="image")], ids=["plain", "inj_all", "inj_image"])
def test_batched_cached_scores_equal_single_pair_forwards(folder, images, injection):
  """Mixed pairs: several captions per image (shared prefix) and several images per chunk."""
  sc = _scorer(folder, injection, floor_decimals=None)
  captions = CORPUS[:3]
  pairs = [(0, 1), (2, 0), (0, 2), (1, 1), (0, 0), (2, 2)]
  mixed = sc.score_pairs(images, captions, pairs)
  _check(mixed, pairs, {pr: _one_pair(sc, images[pr[0]], captions[pr[1]], injection)
                        for pr in pairs})
  if injection is None:
    assert (mixed.armed_layer == -1).all()
  else:
    assert set(mixed.armed_layer.tolist()) <= {2, 3}
  assert len(sc._vision_cache) == 3  # each gallery image went through the vision tower once


def test_both_directions_equal_single_pair_forwards(folder, images):
  sc = _scorer(folder, INJ, floor_decimals=None)
  t2i = sc.score_text_to_image(CORPUS[3], images)
  i2t = sc.score_image_to_text(images[2], CORPUS)
  _check(t2i, [(k, 3) for k in range(3)],
         {(k, 3): _one_pair(sc, images[k], CORPUS[3], INJ) for k in range(3)})
  _check(i2t, [(2, j) for j in range(4)],
         {(2, j): _one_pair(sc, images[2], CORPUS[j], INJ) for j in range(4)})


def test_injection_changes_scores_chunking_and_flooring(folder, images):
  plain = _scorer(folder, None, floor_decimals=None)
  inj = _scorer(folder, INJ, floor_decimals=None)
  floored = _scorer(folder, None, batch_size=3, floor_decimals=4)  # 2 chunks of captions
  a = plain.score_image_to_text(images[0], CORPUS)
  b = inj.score_image_to_text(images[0], CORPUS)
  c = floored.score_image_to_text(images[0], CORPUS)
  assert (b.armed_layer >= 2).all() and (a.armed_layer == -1).all()
  assert (np.abs(a.p_true - b.p_true) / a.p_true).max() > 1e-4  # the injected FFN changed them
  np.testing.assert_array_equal(c.p_true, np.floor(a.p_true * 1e4) / 1e4)
  assert (c.p_true > 0).all()
  np.testing.assert_allclose(c.entropy, a.entropy, rtol=1e-6)


def test_bad_arguments_are_clear(folder, images):
  with pytest.raises(ValueError, match="batch_size"):
    scorer.PairScorer.from_folder(folder, batch_size=0)
  sc = scorer.PairScorer.from_folder(folder)
  with pytest.raises(IndexError, match="out of range"):
    sc.score_pairs(images, ["x"], [(0, 3)])


_SHARDED = r"""
import sys
import numpy as np
from configs import common
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.retllm import scorer

folder = sys.argv[1]
cfg = common.get_config().mesh
cfg.data, cfg.model = 1, 2
m = mesh_lib.make_mesh(cfg)
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8),
          rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)]
caps = ["a red fox jumps over the fence", "two dogs play in the snow"]
kw = dict(floor_decimals=None, injection=None, prefix_bucket=128, suffix_bucket=64)
single = scorer.PairScorer.from_folder(folder, **kw)
sharded = scorer.PairScorer.from_folder(folder, mesh=m, axis_rules=mesh_lib.axis_rules(cfg), **kw)
assert len(sharded.params["layers"]["gate"].sharding.device_set) == 2
pairs = [(0, 0), (0, 1), (1, 1)]
a = single.score_pairs(images, caps, pairs)
b = sharded.score_pairs(images, caps, pairs)
np.testing.assert_allclose(b.p_true, a.p_true, rtol=1e-5, atol=1e-7)
np.testing.assert_allclose(b.entropy, a.entropy, rtol=1e-5)
print("SHARDED_OK")
"""


def test_weights_sharded_over_model_axis_give_the_same_scores(folder, repo_root):
  """Two fake CPU devices, mesh (data=1, model=2): weights split by their logical axes."""
  import os
  import subprocess
  import sys

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(repo_root), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SHARDED, folder], env=env, capture_output=True,
                       text=True, timeout=600, cwd=str(repo_root))
  assert "SHARDED_OK" in out.stdout, out.stderr[-3000:]
