"""LACE and label smoothing against hand-computed values, mixup, accuracy buckets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retformer_jax.evaluation import metrics
from retformer_jax.train import losses


def test_label_smoothing_spreads_eps_over_all_classes():
  # C = 3, eps = 0.3: every class gets eps / C = 0.1 and the true class 1 - eps = 0.7 more.
  got = losses.smoothed_targets(jnp.array([0, 2]), 3, 0.3)
  np.testing.assert_allclose(got, [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], atol=1e-7)
  np.testing.assert_allclose(losses.smoothed_targets(jnp.array([1]), 3, 0.0), [[0, 1, 0]])


def test_log_prior_by_hand():
  # counts 6, 3, 3 -> pi = 1/2, 1/4, 1/4 -> log pi = -ln 2, -2 ln 2, -2 ln 2.
  np.testing.assert_allclose(losses.log_prior([6, 3, 3]), [-0.6931472, -1.3862944, -1.3862944],
                             rtol=1e-6)
  # A class without images counts as 1: counts 6, 3, 1 -> pi = 0.6, 0.3, 0.1.
  np.testing.assert_allclose(losses.log_prior([6, 3, 0]), [-0.5108256, -1.2039728, -2.3025851],
                             rtol=1e-6)


# Two examples, 3 classes, logits [ln 2, 0, 0] -> softmax [1/2, 1/4, 1/4], labels 0 and 1,
# smoothing eps = 0.3 -> targets [0.8, 0.1, 0.1] and [0.1, 0.8, 0.1].
LOGITS = np.array([[0.6931472, 0.0, 0.0], [0.6931472, 0.0, 0.0]], np.float32)
LABELS = np.array([0, 1])


def test_cross_entropy_with_label_smoothing_by_hand():
  t = losses.smoothed_targets(jnp.asarray(LABELS), 3, 0.3)
  got = losses.classification_loss(jnp.asarray(LOGITS), t, loss="ce")
  # log softmax = [-ln 2, -2 ln 2, -2 ln 2]
  # example 0: 0.8 ln 2 + 0.1 (2 ln 2) + 0.1 (2 ln 2) = 1.2 ln 2 = 0.8317766
  # example 1: 0.1 ln 2 + 0.8 (2 ln 2) + 0.1 (2 ln 2) = 1.9 ln 2 = 1.3169796
  np.testing.assert_allclose(got, [0.8317766, 1.3169796], rtol=1e-6)
  # Without smoothing: ln 2 and 2 ln 2.
  got = losses.classification_loss(jnp.asarray(LOGITS), losses.smoothed_targets(
      jnp.asarray(LABELS), 3, 0.0), loss="ce")
  np.testing.assert_allclose(got, [0.6931472, 1.3862944], rtol=1e-6)


def test_lace_by_hand():
  t = losses.smoothed_targets(jnp.asarray(LABELS), 3, 0.3)
  got = losses.classification_loss(jnp.asarray(LOGITS), t, loss="lace",
                                   log_prior_c=losses.log_prior([6, 3, 3]), lace_tau=2.0)
  # logits + 2 log pi = [ln 2 - 2 ln 2, 0 - 4 ln 2, 0 - 4 ln 2] = [-ln 2, -4 ln 2, -4 ln 2]
  # -> softmax proportional to [1/2, 1/16, 1/16] = [0.8, 0.1, 0.1]
  # example 0: -(0.8 ln 0.8 + 0.1 ln 0.1 + 0.1 ln 0.1) = 0.8 (0.2231436) + 0.2 (2.3025851)
  #          = 0.1785148 + 0.4605170 = 0.6390318
  # example 1: -(0.1 ln 0.8 + 0.8 ln 0.1 + 0.1 ln 0.1) = 0.1 (0.2231436) + 0.9 (2.3025851)
  #          = 0.0223144 + 2.0723266 = 2.0946410
  np.testing.assert_allclose(got, [0.6390318, 2.0946410], rtol=1e-6)
  # LACE rebalances: the head class's example costs less than with plain CE (0.8317766), the
  # tail class's more (1.3169796).
  assert got[0] < 0.8317766 < 1.3169796 < got[1]


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
