"""The RetLLM pipeline with an injected encoder and scorer: metrics, resume, skip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from retformer_jax.retllm import caption_sets
from retformer_jax.retllm import pipeline
from retformer_jax.retllm import ranking


class Result:

  def __init__(self, p_true, entropy):
    self.p_true, self.entropy = np.asarray(p_true), np.asarray(entropy)


def _gallery(num_images=12, per_image=2):
  """Image i is a constant array of value i; caption j of image i is 'img i cap j'."""
  caps = [f"img {i} cap {j}" for i in range(num_images) for j in range(per_image)]
  return caption_sets.CaptionSet(
      name="toy", num_images=num_images, load_image=lambda i: np.full((2, 2, 3), i, np.uint8),
      captions=caps, caption_image=np.repeat(np.arange(num_images), per_image))


class NoisyEncoder:
  """Embeds image i / captions of image i near one random direction, with noise."""

  identity = "noisy-v1"

  def __init__(self, num_images, dim=6, noise=0.9):
    rng = np.random.default_rng(0)
    self.centres = rng.normal(size=(num_images, dim))
    self.noise = noise

  def embed_images(self, images):
    ids = [int(im[0, 0, 0]) for im in images]
    rng = np.random.default_rng(ids)
    return self.centres[ids] + self.noise * rng.normal(size=(len(ids), self.centres.shape[1]))

  def embed_texts(self, texts):
    ids = [int(t.split()[1]) for t in texts]
    rng = np.random.default_rng([7] + ids)
    return self.centres[ids] + self.noise * rng.normal(size=(len(ids), self.centres.shape[1]))


class OracleScorer:
  """P(True)=0.9 for a true pair, else 0.3; counts pairs; can fail after some queries."""

  def __init__(self, fail_after=None):
    self.pairs, self.queries, self.fail_after = 0, 0, fail_after

  def _tick(self, n):
    if self.fail_after is not None and self.queries >= self.fail_after:
      raise KeyboardInterrupt("simulated preemption")
    self.queries += 1
    self.pairs += n

  def score_text_to_image(self, caption, images):
    self._tick(len(images))
    gt = int(caption.split()[1])
    p = [0.9 if int(im[0, 0, 0]) == gt else 0.3 for im in images]
    return Result(p, np.linspace(1.0, 0.5, len(images)))

  def score_image_to_text(self, image, captions):
    self._tick(len(captions))
    i = int(image[0, 0, 0])
    p = [0.9 if int(c.split()[1]) == i else 0.3 for c in captions]
    return Result(p, np.zeros(len(captions)))


class PairsOracle(OracleScorer):
  """The same oracle through `score_pairs` (what the pipeline prefers when it exists)."""

  def __init__(self):
    super().__init__()
    self.calls = 0

  def score_pairs(self, images, captions, pairs):
    self.calls += 1
    self.pairs += len(pairs)
    p = [0.9 if int(images[i][0, 0, 0]) == int(captions[j].split()[1]) else 0.3 for i, j in pairs]
    return Result(p, np.zeros(len(pairs)))


def _expected_oracle_recall(data, encoder, k):
  """With an oracle scorer, a query hits at 1 iff a ground truth is among CLIP's top k."""
  from retformer_jax.retllm import coarse

  img = encoder.embed_images([data.image(i) for i in range(data.num_images)])
  txt = encoder.embed_texts(list(data.captions))
  c = coarse.candidates(img, txt, 10)
  t2i = (c.t2i[:, :k] == data.caption_image[:, None]).any(1).mean() * 100
  i2t = (data.caption_image[c.i2t[:, :k]] == np.arange(data.num_images)[:, None]).any(1).mean()
  return t2i, i2t * 100, c


def test_pipeline_metrics_resume_and_skip(tmp_path):
  data = _gallery()
  enc = NoisyEncoder(data.num_images)
  settings = pipeline.Settings(top_k=3, chunk_size=5, scorer_identity="oracle")
  out = str(tmp_path / "retllm")

  # A run killed part-way keeps its finished chunks.
  crashing = OracleScorer(fail_after=7)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(data, enc, lambda: crashing, out, settings)
  assert not os.path.exists(os.path.join(out, "metrics.json"))

  resumed = OracleScorer()
  m = pipeline.run(data, enc, lambda: resumed, out, settings)
  # 24 caption queries + 12 image queries; the first chunk (5 queries) was already done.
  assert resumed.queries == 24 + 12 - 5

  fresh = OracleScorer()
  m_fresh = pipeline.run(data, enc, lambda: fresh, str(tmp_path / "fresh"), settings)
  assert m == m_fresh

  with open(os.path.join(out, "metrics.json")) as f:
    on_disk = json.load(f)
  assert {k: on_disk[k] for k in m} == m

  t2i_r1, i2t_r1, cands = _expected_oracle_recall(data, enc, 3)
  assert m["t2i_r1"] == pytest.approx(t2i_r1) and m["i2t_r1"] == pytest.approx(i2t_r1)
  clip_t2i = ranking.text_to_image_recall(cands.t2i, np.arange(24), data.caption_image)
  assert m["clip_t2i_r1"] == pytest.approx(clip_t2i[1])
  assert m["clip_t2i_r1"] < m["t2i_r1"]  # the noisy encoder leaves room for re-ranking
  # R@5/R@10 are unchanged by re-ranking the top 3 with an oracle.
  assert m["t2i_r10"] == m["clip_t2i_r10"]

  def must_not_build():
    raise AssertionError("the scorer must not be built when every chunk is done")

  assert pipeline.run(data, enc, must_not_build, out, settings) == m
  # Other chunk boundaries are other files: no clash with the finished run, same metrics.
  other = pipeline.Settings(top_k=3, chunk_size=7, scorer_identity="oracle")
  assert pipeline.run(data, enc, OracleScorer, out, other) == m


def test_pipeline_uses_score_pairs_per_chunk(tmp_path):
  data = _gallery()
  enc = NoisyEncoder(data.num_images)
  settings = pipeline.Settings(top_k=3, chunk_size=5, scorer_identity="oracle")
  m_single = pipeline.run(data, enc, OracleScorer, str(tmp_path / "a"), settings)
  batched = PairsOracle()
  m_pairs = pipeline.run(data, enc, lambda: batched, str(tmp_path / "b"), settings)
  assert batched.queries == 0 and batched.calls == 5 + 3 and batched.pairs == (24 + 12) * 3
  # The oracle's entropies differ between the two paths only among wrong candidates.
  for key in ("t2i_r1", "i2t_r1", "clip_t2i_r1", "clip_i2t_r1", "t2i_r10", "i2t_r10"):
    assert m_single[key] == m_pairs[key], key


def test_pipeline_num_queries_limits_scoring(tmp_path):
  data = _gallery()
  scorer = OracleScorer()
  settings = pipeline.Settings(top_k=2, chunk_size=4, num_queries=6, scorer_identity="oracle")
  enc = NoisyEncoder(data.num_images)
  m = pipeline.run(data, enc, lambda: scorer, str(tmp_path), settings)
  assert scorer.queries == 12 and scorer.pairs == 24
  with open(tmp_path / "metrics.json") as f:
    assert json.load(f)["t2i_queries"] == 6
  # With the oracle, query q hits at 1 iff its ground truth is in CLIP's top 2 (first 6 only).
  img = enc.embed_images([data.image(i) for i in range(data.num_images)])
  txt = enc.embed_texts(list(data.captions))
  img, txt = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (img, txt))
  top2_t2i = np.argsort(-(txt @ img.T), axis=1, kind="stable")[:6, :2]
  top2_i2t = np.argsort(-(img @ txt.T), axis=1, kind="stable")[:6, :2]
  want_t2i = 100 * np.mean([data.caption_image[q] in top2_t2i[q] for q in range(6)])
  want_i2t = 100 * np.mean([q in data.caption_image[top2_i2t[q]] for q in range(6)])
  assert m["t2i_r1"] == pytest.approx(want_t2i) and m["i2t_r1"] == pytest.approx(want_i2t)


class PreferringScorer:
  """P(True) = 0.9 for the pairs `match(image id, caption)` picks, 0.3 for the others."""

  def __init__(self, match, *, entropy_only=False, batched=False):
    self.match, self.entropy_only = match, entropy_only
    if batched:
      self.score_pairs = self._score_pairs

  def _result(self, hits):
    hits = np.asarray(hits, bool)
    if self.entropy_only:  # every score equal: only the entropy tie-break can find the pair
      return Result(np.full(len(hits), 0.5), np.where(hits, 0.1, 0.9))
    return Result(np.where(hits, 0.9, 0.3), np.full(len(hits), 0.5))

  def score_text_to_image(self, caption, images):
    return self._result([self.match(int(im[0, 0, 0]), caption) for im in images])

  def score_image_to_text(self, image, captions):
    return self._result([self.match(int(image[0, 0, 0]), c) for c in captions])

  def _score_pairs(self, images, captions, pairs):
    return self._result([self.match(int(images[i][0, 0, 0]), captions[j]) for i, j in pairs])


def _true_pair(image_id, caption):
  return image_id == int(caption.split()[1])


def _wrong_pair(image_id, caption):  # prefers the next image's captions
  return image_id == (int(caption.split()[1]) + 1) % 12


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("entropy_only", [False, True])
def test_a_scorer_that_prefers_the_true_pair_gives_recall_100(tmp_path, batched, entropy_only):
  """Top K covers the whole gallery, so every ground truth is re-scored: whatever CLIP's order,
  recall@1 must be 100 in both directions."""
  data = _gallery()
  settings = pipeline.Settings(top_k=24, chunk_size=5, scorer_identity="x")
  scorer = PreferringScorer(_true_pair, entropy_only=entropy_only, batched=batched)
  m = pipeline.run(data, NoisyEncoder(data.num_images), lambda: scorer, str(tmp_path), settings)
  assert m["t2i_r1"] == 100.0 and m["i2t_r1"] == 100.0
  assert m["clip_t2i_r1"] < 100.0 and m["clip_i2t_r1"] < 100.0  # the re-ranking did it


@pytest.mark.parametrize("batched", [False, True])
def test_a_scorer_that_prefers_a_wrong_pair_gives_recall_0(tmp_path, batched):
  data = _gallery()
  settings = pipeline.Settings(top_k=24, chunk_size=5, scorer_identity="x")
  scorer = PreferringScorer(_wrong_pair, batched=batched)
  m = pipeline.run(data, NoisyEncoder(data.num_images), lambda: scorer, str(tmp_path), settings)
  assert m["t2i_r1"] == 0.0 and m["i2t_r1"] == 0.0
  assert m["clip_t2i_r1"] > 0.0 and m["clip_i2t_r1"] > 0.0  # CLIP alone finds some


def test_pipeline_refuses_chunks_of_another_run(tmp_path):
  data = _gallery()
  enc = NoisyEncoder(data.num_images)
  settings = pipeline.Settings(top_k=2, chunk_size=4, scorer_identity="oracle")
  pipeline.run(data, enc, OracleScorer, str(tmp_path), settings)
  score_dirs = os.listdir(tmp_path / "scores")
  t2i_dir = tmp_path / "scores" / score_dirs[0] / "t2i"
  chunk = t2i_dir / sorted(os.listdir(t2i_dir))[0]
  with np.load(chunk) as z:
    arrays = dict(z)
  arrays["candidates"] = arrays["candidates"][:, ::-1]
  np.savez(chunk, **arrays)
  with pytest.raises(RuntimeError, match="other queries or candidates"):
    pipeline.run(data, enc, OracleScorer, str(tmp_path), settings)


def test_cache_order_is_a_permutation_that_groups_shared_candidates():
  rng = np.random.default_rng(3)
  cands = rng.integers(0, 4, size=(40, 3))
  order = pipeline.cache_order(cands)
  np.testing.assert_array_equal(np.sort(order), np.arange(40))
  ranked = cands[order]
  # Sorted by the whole list, top-1 first, so equal top-1s are contiguous; ties keep row order.
  keys = [tuple(r) + (int(q),) for r, q in zip(ranked, order)]
  assert keys == sorted(keys)
  assert (np.diff(ranked[:, 0]) >= 0).all()
  np.testing.assert_array_equal(pipeline.cache_order(np.zeros((5, 2), int)), np.arange(5))
  with pytest.raises(ValueError, match="candidate lists"):
    pipeline.cache_order(np.arange(4))


def _chunk_files(out, direction):
  (key,) = os.listdir(os.path.join(out, "scores"))
  folder = os.path.join(out, "scores", key, direction)
  return [dict(np.load(os.path.join(folder, f))) for f in sorted(os.listdir(folder))]


def test_cache_order_keeps_metrics_and_puts_shared_images_in_one_chunk(tmp_path):
  data = _gallery()
  enc = NoisyEncoder(data.num_images)
  runs = {}
  for ordered in (True, False):
    settings = pipeline.Settings(top_k=3, chunk_size=4, scorer_identity="oracle",
                                 cache_order=ordered)
    out = str(tmp_path / str(ordered))
    scorer = PairsOracle()
    m = pipeline.run(data, enc, lambda: scorer, out, settings)
    with np.load(os.path.join(out, "scores", os.listdir(os.path.join(out, "scores"))[0],
                              "ranked.npz")) as z:
      ranked = dict(z)
    runs[ordered] = m, ranked, _chunk_files(out, "t2i"), scorer.pairs
  (m1, r1, chunks1, pairs1), (m0, r0, chunks0, pairs0) = runs[True], runs[False]
  assert m1 == m0 and pairs1 == pairs0 == (24 + 12) * 3
  for name in r0:
    np.testing.assert_array_equal(r1[name], r0[name], err_msg=name)
  # The files record their queries: the cache order is a permutation of all of them...
  held = np.concatenate([c["queries"] for c in chunks1])
  np.testing.assert_array_equal(np.sort(held), np.arange(24))
  assert not np.array_equal(held, np.arange(24))
  # ...whose chunks hold fewer distinct images than chunks in query order.
  distinct = lambda chunks: sum(len(np.unique(c["candidates"])) for c in chunks)  # noqa: E731
  assert distinct(chunks1) < distinct(chunks0)


def test_processes_score_their_own_chunks_and_process_0_writes(tmp_path):
  """Two processes simulated one after the other (the barrier is a no-op here)."""
  data = _gallery()
  enc = NoisyEncoder(data.num_images)
  settings = pipeline.Settings(top_k=3, chunk_size=5, scorer_identity="oracle")
  out = str(tmp_path / "two")
  no_wait = lambda name: None  # noqa: E731

  alone = OracleScorer()
  with pytest.raises(RuntimeError, match="missing after every process"):
    pipeline.run(data, enc, lambda: alone, out, settings, process=(0, 2), barrier=no_wait)
  # t2i chunks 0, 2, 4 (5 + 5 + 4 queries) and i2t chunks 0, 2 (5 + 2).
  assert alone.queries == 21
  assert not os.path.exists(os.path.join(out, "metrics.json"))

  second = OracleScorer()
  assert pipeline.run(data, enc, lambda: second, out, settings, process=(1, 2),
                      barrier=no_wait) is None
  assert second.queries == 5 + 5 + 5  # t2i chunks 1, 3 and i2t chunk 1
  assert not os.path.exists(os.path.join(out, "metrics.json"))

  def must_not_build():
    raise AssertionError("every chunk of process 0 is done")

  m = pipeline.run(data, enc, must_not_build, out, settings, process=(0, 2), barrier=no_wait)
  assert m == pipeline.run(data, enc, OracleScorer, str(tmp_path / "one"), settings)
  with open(os.path.join(out, "metrics.json")) as f:
    assert {k: v for k, v in json.load(f).items() if k in m} == m
