"""LACE, label smoothing and mixup against direct numpy formulas; accuracy buckets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retformer_jax.evaluation import metrics
from retformer_jax.train import losses


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_lace_and_label_smoothing_match_numpy():
  r = np.random.default_rng(0)
  logits = r.normal(size=(6, 5)).astype(np.float32) * 3
  labels = np.array([0, 1, 4, 2, 2, 3])
  counts = np.array([100, 50, 10, 3, 0])
  eps, tau = 0.1, 1.5
  prior = np.maximum(counts, 1) / np.maximum(counts, 1).sum()
  np.testing.assert_allclose(losses.log_prior(counts), np.log(prior), rtol=1e-6)
  t = np.full((6, 5), eps / 5)
  t[np.arange(6), labels] += 1 - eps
  np.testing.assert_allclose(losses.smoothed_targets(jnp.asarray(labels), 5, eps), t, atol=1e-7)
  expect_lace = -(t * _np_log_softmax(logits + tau * np.log(prior))).sum(-1)
  got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(t), loss="lace",
                                   log_prior_c=losses.log_prior(counts), lace_tau=tau)
  np.testing.assert_allclose(got, expect_lace, rtol=1e-5)
  expect_ce = -(t * _np_log_softmax(logits)).sum(-1)
  got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(t), loss="ce")
  np.testing.assert_allclose(got, expect_ce, rtol=1e-5)
  # LACE raises the loss of head-class predictions relative to CE: it is not a no-op.
  assert np.abs(expect_lace - expect_ce).max() > 0.1


def test_bad_loss_name():
  with pytest.raises(ValueError, match="config.train.loss"):
    losses.classification_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), loss="focal")
  with pytest.raises(ValueError, match="log_prior"):
    losses.classification_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), loss="lace")


def test_mixup_matches_numpy():
  r = np.random.default_rng(1)
  z, ni, nt = r.normal(size=(4, 3)), r.normal(size=(4, 2, 3)), r.normal(size=(4, 2, 3))
  t = np.eye(4)[[0, 1, 2, 3]]
  lam, perm = 0.7, np.array([2, 0, 3, 1])
  (mz, mi, mt), mtgt = losses.mixup_apply(lam, perm, tuple(map(jnp.asarray, (z, ni, nt))),
                                          jnp.asarray(t))
  for got, x in ((mz, z), (mi, ni), (mt, nt), (mtgt, t)):
    np.testing.assert_allclose(got, lam * x + (1 - lam) * x[perm], rtol=1e-6)
  # The query text slot is built after mixup from zeros, so it stays zero; targets stay a distribution.
  np.testing.assert_allclose(np.asarray(mtgt).sum(-1), 1.0, rtol=1e-6)


def test_mixup_sampling_is_a_convex_pairing():
  x = jnp.arange(8.0)[:, None] * jnp.ones((8, 3))
  t = jax.nn.one_hot(jnp.arange(8), 8)
  (mx,), mt = losses.mixup(jax.random.key(3), 0.4, (x,), t)
  lam = float(mt.max())  # the larger weight of each mixed row (lam or 1 - lam)
  assert 0.5 <= lam <= 1.0
  # Every mixed row is the same convex combination of its target weights.
  np.testing.assert_allclose(np.asarray(mx[:, 0]), np.asarray(mt @ jnp.arange(8.0)), rtol=1e-5)


def test_accuracy_report_buckets_and_top5():
  counts = np.array([150, 120, 50, 30, 10, 5])  # many, many, medium, medium, few, few
  labels = np.array([0, 0, 1, 2, 3, 4, 5, 5, -1])
  top = np.array([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [1, 2, 3, 4, 5], [3, 2, 1, 0, 4],
                  [3, 0, 1, 2, 4], [0, 1, 2, 3, 5], [5, 0, 1, 2, 3], [0, 1, 2, 3, 4],
                  [0, 1, 2, 3, 4]])
  rep = metrics.accuracy_report(top, labels, counts, many_above=100, few_below=20, with_top5=True)
  correct = np.array([1, 0, 1, 0, 1, 0, 1, 0])
  assert rep["num_examples"] == 8
  assert rep["top1"] == pytest.approx(correct.mean())
  assert rep["many"] == pytest.approx(2 / 3)  # examples of classes 0, 0, 1
  assert rep["medium"] == pytest.approx(1 / 2)  # classes 2, 3
  assert rep["few"] == pytest.approx(1 / 3)  # classes 4, 5, 5
  assert rep["top5"] == pytest.approx(6 / 8)  # the class-4 and the last class-5 example miss
  rep = metrics.accuracy_report(top, labels, counts, many_above=1000, few_below=1,
                                with_top5=False)
  assert rep["many"] is None and rep["few"] is None and rep["top5"] is None
  assert rep["medium"] == pytest.approx(rep["top1"])
  pc = metrics.per_class_accuracy(top[:8, 0], labels[:8], 7)
  np.testing.assert_allclose(pc[:6], [0.5, 1, 0, 1, 0, 0.5])
  assert np.isnan(pc[6])
