"""RetLLM re-ranking order, Recall@k and exact top-k, on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from retformer_jax.retllm import ranking
from retformer_jax.retllm import similarity


def test_rerank_score_then_entropy_then_clip_rank():
  clip_order = np.array([[10, 11, 12, 13, 14, 15, 16]])
  scores = np.array([[0.50, 0.90, 0.50, 0.90, 0.50]])
  entropy = np.array([[1.0, 2.0, 0.5, 1.5, 1.0]])
  out = ranking.rerank(clip_order, scores, entropy)
  # 0.90: entropy 1.5 (13) before 2.0 (11); 0.50: entropy 0.5 (12), then 1.0 tie -> CLIP rank
  # (10 before 14); the unscored tail keeps CLIP order.
  np.testing.assert_array_equal(out, [[13, 11, 12, 10, 14, 15, 16]])


def test_rerank_full_tie_keeps_clip_order_and_rows_are_independent():
  clip_order = np.array([[3, 1, 2], [7, 8, 9]])
  scores = np.array([[0.2, 0.2], [0.1, 0.7]])
  entropy = np.array([[0.3, 0.3], [0.0, 0.0]])
  np.testing.assert_array_equal(ranking.rerank(clip_order, scores, entropy),
                                [[3, 1, 2], [8, 7, 9]])


def test_rerank_rejects_bad_shapes_and_nan():
  with pytest.raises(ValueError, match="disagree"):
    ranking.rerank(np.zeros((2, 5), int), np.zeros((2, 3)), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="only 2 candidates"):
    ranking.rerank(np.zeros((1, 2), int), np.zeros((1, 3)), np.zeros((1, 3)))
  with pytest.raises(ValueError, match="NaN"):
    ranking.rerank(np.zeros((1, 2), int), np.array([[np.nan, 0]]), np.zeros((1, 2)))


def test_text_to_image_recall():
  caption_image = np.array([0, 0, 1, 1, 2, 2])
  queries = np.array([0, 2, 4])
  ranked = np.array([[0, 1, 2], [0, 2, 1], [0, 1, 2]])
  r = ranking.text_to_image_recall(ranked, queries, caption_image, ks=(1, 2, 3))
  assert r == pytest.approx({1: 100 / 3, 2: 100 / 3, 3: 100.0})


def test_image_to_text_recall_any_ground_truth_caption_counts():
  caption_image = np.array([0, 0, 1, 1, 2, 2])
  queries = np.array([0, 1, 2])
  # image 0: its 2nd caption (1) first; image 1: others first, own caption 3 third;
  # image 2: never retrieves its own.
  ranked = np.array([[1, 2, 4], [0, 4, 3], [0, 1, 2]])
  r = ranking.image_to_text_recall(ranked, queries, caption_image, ks=(1, 2, 3, 10))
  assert r == pytest.approx({1: 100 / 3, 2: 100 / 3, 3: 200 / 3, 10: 200 / 3})


def test_metrics_dict_keys():
  one = {1: 1.0, 5: 5.0, 10: 10.0}
  m = ranking.metrics_dict(one, one, one, one)
  assert set(m) == {f"{p}{d}_r{k}" for p in ("", "clip_") for d in ("t2i", "i2t")
                    for k in (1, 5, 10)}


def test_top_k_matches_numpy_and_blocks():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(37, 8)), rng.normal(size=(23, 8))
  sims, idx = similarity.top_k(q, g, 5, block=16)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  full = qn @ gn.T
  np.testing.assert_array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :5])
  np.testing.assert_allclose(sims, np.take_along_axis(full, idx, 1), atol=1e-5)
  assert similarity.top_k(q, g, 50)[1].shape == (37, 23)
