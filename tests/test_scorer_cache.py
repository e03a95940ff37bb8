"""PairScorer caches across calls: prefix K/V (LRU by bytes) and vision features change no score."""

from __future__ import annotations

import numpy as np
import pytest

from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.models.qwen_injection import InjectionConfig
from retformer_jax.retllm import caches, scorer

import test_scorer  # its full-forward reference: one pair, whole prompt, no cache

CORPUS = ["a red fox jumps over the fence", "two dogs play in the snow", "a man rides a bike",
          "children on a sunny beach"]
# 4 layers: the trigger watches layers 1 and 2 and arms layer 2 or 3.
FIRES = InjectionConfig(enabled=True, layer_lo=0, layer_hi=3, tau=0.0)
NEVER = InjectionConfig(enabled=True, layer_lo=0, layer_hi=3, tau=1.5)  # entropy/log k <= 1
# Chunks of queries as the pipeline hands them over: text->image lists sharing images, then
# image->text (the query image's prefix is the one cached for its caption queries).
CALLS = [("t2i", 0, [0, 1, 2]), ("t2i", 1, [2, 0, 3]), ("t2i", 2, [1, 3]),
         ("i2t", 2, [0, 1, 2, 3]), ("i2t", 3, [3, 1])]
PREFIXES_NEEDED = sum(len(c) if d == "t2i" else 1 for d, _, c in CALLS)  # one per image per call


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("scorer_cache") / "qwen")
  return demo_qwen.build_demo_qwen(path, CORPUS, min_pixels=8 * 784, max_pixels=16 * 784, seed=1)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  # Images 0 and 3 have the same size: equal prompt tokens, so only the pixels tell them apart.
  return [rng.integers(0, 256, hw + (3,), dtype=np.uint8)
          for hw in ((90, 120), (140, 100), (100, 100), (90, 120))]


def _scorer(folder, injection, **kw):
  return scorer.PairScorer.from_folder(folder, injection=injection, floor_decimals=None,
                                       prefix_bucket=128, suffix_bucket=64, **kw)


def _chunked(sc, images, calls=CALLS):
  """Scores of every call, one score_pairs per call; pairs listed as (image, caption)."""
  out = {}
  for direction, q, cands in calls:
    if direction == "t2i":
      res = sc.score_pairs([images[i] for i in cands], [CORPUS[q]], [(r, 0) for r in
                                                                      range(len(cands))])
      keys = [(i, q) for i in cands]
    else:
      res = sc.score_pairs([images[q]], [CORPUS[j] for j in cands], [(0, r) for r in
                                                                      range(len(cands))])
      keys = [(q, j) for j in cands]
    for n, key in enumerate(keys):
      out[key] = (res.p_true[n], res.entropy[n], res.armed_layer[n])
  return out


def _full_forwards(sc, images, keys, injection):
  """Every pair alone, as the reference scores it: one full forward, no cache of any kind."""
  out = {}
  for i, j in keys:
    p, e = test_scorer._one_pair(sc, images[i], CORPUS[j], injection)
    out[(i, j)] = (p, e)
  return out


def _assert_equal(got, want):
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_allclose(got[key][0], want[key][0], atol=1e-5, rtol=0, err_msg=str(key))
    np.testing.assert_allclose(got[key][1], want[key][1], atol=1e-5, rtol=1e-6,
                               err_msg=str(key))


@pytest.mark.slow  # every pair also scored alone: full parity, many compiled shapes
@pytest.mark.parametrize("injection", [None, NEVER, FIRES], ids=["off", "not_firing", "firing"])
def test_warm_caches_give_the_scores_of_uncached_pairs(folder, images, injection):
  cached = _scorer(folder, injection)
  got = _chunked(cached, images)
  st = cached.stats
  # 4 gallery images: each through the vision tower and prefilled once, hit by later calls.
  assert st["vision_calls"] == 4 and st["prefix_misses"] == 4
  assert st["prefix_hits"] == PREFIXES_NEEDED - 4
  armed = np.array([v[2] for v in got.values()])
  if injection is FIRES:
    assert (armed == FIRES.first_armable).all() and st["reinject_rows"] == st["pairs"]
  else:
    assert (armed == -1).all() and st["reinject_rows"] == 0
  _assert_equal(got, _full_forwards(cached, images, list(got), injection))
  if injection is None:  # injection changes the scores where it fires, not where it does not
    assert max(abs(v[0] - w[0]) for v, w in zip(got.values(),
                                                  _chunked(_scorer(folder, NEVER), images).values())
               ) < 1e-5


@pytest.mark.slow
def test_tiny_prefix_budget_evicts_and_keeps_the_scores(folder, images):
  probe = _scorer(folder, FIRES)
  probe.score_pairs([images[0]], [CORPUS[0]], [(0, 0)])
  one_entry = probe._prefix_cache.bytes
  assert one_entry > 0
  tight = _scorer(folder, FIRES, prefix_cache_bytes=one_entry + one_entry // 2)
  got = _chunked(tight, images)
  assert len(tight._prefix_cache) == 1 and tight._prefix_cache.evictions > 0
  assert tight._prefix_cache.bytes <= one_entry + one_entry // 2
  assert tight.stats["prefix_misses"] > 4  # evicted prefixes were computed again
  assert tight.stats["vision_calls"] == 4  # ... from vision features kept for the whole run
  want = _chunked(_scorer(folder, FIRES), images)
  _assert_equal(got, want)
  assert all(got[k][2] == want[k][2] for k in want)


def test_no_prefix_cache_shares_within_a_call_only(folder, images):
  sc = _scorer(folder, None, prefix_cache_bytes=0)
  _chunked(sc, images)
  assert len(sc._prefix_cache) == 0 and sc.stats["prefix_hits"] == 0
  assert sc.stats["prefix_misses"] == PREFIXES_NEEDED


def test_bounded_vision_cache_and_bad_sizes(folder, images):
  sc = _scorer(folder, None, vision_cache_size=1, prefix_cache_bytes=0)
  _chunked(sc, images, CALLS[:2])
  assert len(sc._vision_cache) == 1 and sc.stats["vision_calls"] > 4
  with pytest.raises(ValueError, match="prefix_cache_bytes"):
    _scorer(folder, None, prefix_cache_bytes=-1)


def test_lru_bounds():
  lru = caches.LRU(max_bytes=100)
  a, b, c = np.zeros(40, np.uint8), np.zeros(40, np.uint8), np.zeros(40, np.uint8)
  lru.put("a", a)
  lru.put("b", b)
  assert lru.get("a") is a  # "b" is now the least recently used
  lru.put("c", c)
  assert "b" not in lru and "a" in lru and "c" in lru and lru.bytes == 80
  lru.put("big", np.zeros(101, np.uint8))
  assert "big" not in lru and lru.bytes == 80
  counted = caches.LRU(max_items=1)
  counted.put(1, a)
  counted.put(2, b)
  assert len(counted) == 1 and counted.get(1) is None and counted.evictions == 1
