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


def _entropy(image_id, caption):
  """A pointwise entropy (the pair's alone, as the MLLM's) that varies from pair to pair."""
  return 0.5 + 0.01 * ((7 * image_id + 3 * int(caption.split()[1]) + int(caption.split()[3]))
                       % 13)


class OracleScorer:
  """P(True)=0.9 for a true pair, else 0.3; counts calls and pairs; can fail once more than
  `fail_after` pairs would have been scored."""

  def __init__(self, fail_after=None):
    self.pairs, self.queries, self.fail_after = 0, 0, fail_after

  def _tick(self, n):
    if self.fail_after is not None and self.pairs + n > self.fail_after:
      raise KeyboardInterrupt("simulated preemption")
    self.queries += 1
    self.pairs += n

  def score_text_to_image(self, caption, images):
    self._tick(len(images))
    gt = int(caption.split()[1])
    p = [0.9 if int(im[0, 0, 0]) == gt else 0.3 for im in images]
    return Result(p, [_entropy(int(im[0, 0, 0]), caption) for im in images])

  def score_image_to_text(self, image, captions):
    self._tick(len(captions))
    i = int(image[0, 0, 0])
    p = [0.9 if int(c.split()[1]) == i else 0.3 for c in captions]
    return Result(p, [_entropy(i, c) for c in captions])


class PairsOracle(OracleScorer):
  """The same oracle through `score_pairs` (what the pipeline prefers when it exists)."""

  def __init__(self):
    super().__init__()
    self.calls = 0

  def score_pairs(self, images, captions, pairs):
    self.calls += 1
    self.pairs += len(pairs)
    ids = [int(images[i][0, 0, 0]) for i, _ in pairs]
    p = [0.9 if g == int(captions[j].split()[1]) else 0.3 for g, (_, j) in zip(ids, pairs)]
    return Result(p, [_entropy(g, captions[j]) for g, (_, j) in zip(ids, pairs)])


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

  # A run killed part-way keeps its finished chunks: text->image chunks hold 5 * 3 pairs, so
  # the first is saved and the run dies in the second.
  crashing = OracleScorer(fail_after=20)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(data, enc, lambda: crashing, out, settings)
  assert not os.path.exists(os.path.join(out, "metrics.json"))
  assert len(os.listdir(_score_folder(out, "t2i"))) == 1

  resumed = OracleScorer()
  m = pipeline.run(data, enc, lambda: resumed, out, settings)
  # 24 caption queries + 12 image queries, K = 3; the first chunk (15 pairs) was done.
  assert resumed.pairs == (24 + 12) * 3 - 15

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
  assert scorer.pairs == 24
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


def test_pair_order_sorts_pairs_by_image_then_query():
  rng = np.random.default_rng(3)
  cands = rng.integers(0, 4, size=(40, 3))
  queries = np.arange(2, 37)
  ids = pipeline.pair_order(cands, queries)
  np.testing.assert_array_equal(np.sort(ids), np.sort((queries[:, None] * 3 + np.arange(3))
                                                      .reshape(-1)))
  inputs = pipeline.pair_inputs(cands, ids)
  np.testing.assert_array_equal(inputs[:, 0], cands[ids // 3, ids % 3])
  np.testing.assert_array_equal(inputs[:, 1], ids // 3)
  keys = [(int(i), int(q), int(pid)) for (i, q), pid in zip(inputs, ids)]
  assert keys == sorted(keys)
  with pytest.raises(ValueError, match="candidate lists"):
    pipeline.pair_order(np.arange(4), np.arange(4))


def _score_folder(out, direction):
  (key,) = os.listdir(os.path.join(out, "scores"))
  return os.path.join(out, "scores", key, direction)


class ImageCounter(PairsOracle):
  """Records the distinct images of every score_pairs call (the pipeline scores every
  text->image chunk before the image->text ones)."""

  def __init__(self):
    super().__init__()
    self.images_per_call = []

  def score_pairs(self, images, captions, pairs):
    self.images_per_call.append({int(images[i][0, 0, 0]) for i, _ in pairs})
    return super().score_pairs(images, captions, pairs)


def _direct_metrics(data, enc, k):
  """Recall@k computed here: CLIP top lists, each query's K scored by the oracle, reranked."""
  from retformer_jax.retllm import coarse

  img = enc.embed_images([data.image(i) for i in range(data.num_images)])
  txt = enc.embed_texts(list(data.captions))
  c = coarse.candidates(img, txt, max(k, 10))
  oracle = OracleScorer()
  lists = {}
  for d, cand, n in (("t2i", c.t2i, data.num_captions), ("i2t", c.i2t, data.num_images)):
    p, e = np.zeros((n, k), np.float32), np.zeros((n, k), np.float32)
    for q in range(n):
      if d == "t2i":
        res = oracle.score_text_to_image(data.captions[q], [data.image(i) for i in cand[q, :k]])
      else:
        res = oracle.score_image_to_text(data.image(q), [data.captions[i] for i in cand[q, :k]])
      p[q], e[q] = res.p_true, res.entropy
    lists[d] = ranking.rerank(cand[:n], p, e)
  ci = data.caption_image
  return ranking.metrics_dict(
      t2i=ranking.text_to_image_recall(lists["t2i"], np.arange(data.num_captions), ci,
                                       pipeline.RECALL_KS),
      i2t=ranking.image_to_text_recall(lists["i2t"], np.arange(data.num_images), ci,
                                       pipeline.RECALL_KS),
      clip_t2i=ranking.text_to_image_recall(c.t2i, np.arange(data.num_captions), ci,
                                            pipeline.RECALL_KS),
      clip_i2t=ranking.image_to_text_recall(c.i2t, np.arange(data.num_images), ci,
                                            pipeline.RECALL_KS))


def test_text_to_image_chunks_hold_each_image_in_at_most_two_calls(tmp_path):
  """Flickr-shaped: 40 images x 5 captions, K = 5. Each image's pairs sit in one chunk (two at
  a chunk edge), so its prompt prefix is needed by at most 2 score_pairs calls; metrics are
  those of scoring every query's K candidates directly, with or without score_pairs."""
  data = _gallery(num_images=40, per_image=5)
  enc = NoisyEncoder(data.num_images, dim=8, noise=0.6)
  settings = pipeline.Settings(top_k=5, chunk_size=8, scorer_identity="oracle")
  counter = ImageCounter()
  m = pipeline.run(data, enc, lambda: counter, str(tmp_path / "pairs"), settings)
  t2i_calls = 200 * 5 // 40
  assert len(counter.images_per_call) == t2i_calls + 40 // 8
  calls_per_image = np.zeros(data.num_images, int)
  for images in counter.images_per_call[:t2i_calls]:
    calls_per_image[list(images)] += 1
  # Premise: no image is a candidate of more pairs than a chunk holds (else it spans 3 chunks).
  _, _, c = _expected_oracle_recall(data, enc, 5)
  assert np.bincount(c.t2i[:, :5].reshape(-1)).max() <= 8 * 5
  assert calls_per_image.max() <= 2 and calls_per_image.min() >= 1
  # Chunks of 8 caption queries in query order would need each image in far more calls.
  by_query = np.zeros(data.num_images, int)
  for s in range(0, 200, 8):
    by_query[np.unique(c.t2i[s:s + 8, :5])] += 1
  assert by_query.mean() > 2 * calls_per_image.mean()
  assert m == _direct_metrics(data, enc, 5)
  assert pipeline.run(data, enc, OracleScorer, str(tmp_path / "single"), settings) == m


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
  # t2i chunks 0, 2, 4 (15 + 15 + 12 pairs) and i2t chunks 0, 2 (5 + 2 queries, K = 3).
  assert alone.pairs == 42 + 21
  assert not os.path.exists(os.path.join(out, "metrics.json"))

  second = OracleScorer()
  assert pipeline.run(data, enc, lambda: second, out, settings, process=(1, 2),
                      barrier=no_wait) is None
  assert second.pairs == 15 + 15 + 15  # t2i chunks 1, 3 and i2t chunk 1
  assert not os.path.exists(os.path.join(out, "metrics.json"))

  def must_not_build():
    raise AssertionError("every chunk of process 0 is done")

  m = pipeline.run(data, enc, must_not_build, out, settings, process=(0, 2), barrier=no_wait)
  assert m == pipeline.run(data, enc, OracleScorer, str(tmp_path / "one"), settings)
  with open(os.path.join(out, "metrics.json")) as f:
    assert {k: v for k, v in json.load(f).items() if k in m} == m
