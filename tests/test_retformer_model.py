"""RetFormer model: shapes, ablation switches, logical axes, no label leak, attention weights."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retformer_jax.models import retformer as R

B, K, D, C = 3, 5, 16, 7


def _inputs(seed=0):
  r = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  return f(B, D), f(B, K, D), f(B, K, D)


def _model(**kw):
  cfg = dict(num_classes=C, num_layers=2, num_heads=4, backbone_hidden=0)
  cfg.update(kw)
  return R.RetFormer(R.ModelConfig(**cfg))


@pytest.mark.parametrize("modalities", R.MODALITIES)
@pytest.mark.parametrize("width", [0, 8])
def test_shapes_and_logical_axes(modalities, width):
  m = _model(modalities=modalities, width=width, backbone_hidden=12)
  z, ni, nt = _inputs()
  v = m.init(jax.random.key(0), z, ni, nt)
  specs = nn.get_partition_spec(v)["params"]
  shapes = nn.unbox(v)["params"]
  for spec, arr in zip(jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                       jax.tree.leaves(shapes)):
    assert len(spec) == arr.ndim and all(isinstance(a, str) for a in spec), (spec, arr.shape)
  out = m.apply(v, z, ni, nt)
  assert out.shape == (B, C) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


def test_streams_zero_the_query_text_slot():
  z, ni, nt = _inputs()
  e_i, e_t = R.streams(z, ni, nt)
  assert e_i.shape == e_t.shape == (B, K + 1, D)
  np.testing.assert_array_equal(e_i[:, 0], z)
  np.testing.assert_array_equal(e_t[:, 0], 0.0)
  np.testing.assert_array_equal(e_t[:, 1:], nt)


def test_no_retrieval_is_the_scaled_mlp_branch_and_ignores_neighbours():
  m = _model(use_retrieval=False, tau=3.0)
  z, ni, nt = _inputs()
  v = m.init(jax.random.key(0), z, ni, nt)
  assert set(v["params"]) == {"backbone_head"}
  p = nn.unbox(v)["params"]["backbone_head"]
  expect = 1.5 * (np.asarray(z) @ p["kernel"] + p["bias"])
  out = m.apply(v, z, ni, nt)
  np.testing.assert_allclose(out, expect, atol=1e-5)
  np.testing.assert_allclose(m.apply(v, z, ni * 5, -nt), out, atol=1e-6)
  np.testing.assert_allclose(m.apply(v, z), out, atol=1e-6)


def test_fusion_is_tau_half_sum_of_branches():
  m = _model(tau=2.0)
  z, ni, nt = _inputs()
  v = m.init(jax.random.key(1), z, ni, nt)
  full = m.apply(v, z, ni, nt)
  p = nn.unbox(v)["params"]
  mlp_only = np.asarray(z) @ p["backbone_head"]["kernel"] + p["backbone_head"]["bias"]
  m4 = _model(tau=4.0)
  np.testing.assert_allclose(m4.apply(v, z, ni, nt), 2 * full, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(full) - mlp_only).max() > 1e-3  # the retrieval branch contributes


@pytest.mark.parametrize("modalities,unused", [("image", 2), ("text", 1)])
def test_single_modality_ignores_the_other_stream(modalities, unused):
  m = _model(modalities=modalities)
  x = list(_inputs())
  v = m.init(jax.random.key(0), *x)
  out = m.apply(v, *x)
  x2 = list(x)
  x2[unused] = x2[unused] * 3 + 1
  np.testing.assert_array_equal(m.apply(v, *x2), out)
  x3 = list(x)
  used = 3 - unused
  x3[used] = x3[used] * 3 + 1
  assert np.abs(np.asarray(m.apply(v, *x3)) - np.asarray(out)).max() > 1e-4


def test_neighbours_change_the_output_and_order_of_neighbours_does_not():
  m = _model()
  z, ni, nt = _inputs()
  v = m.init(jax.random.key(0), z, ni, nt)
  out = m.apply(v, z, ni, nt)
  perm = np.array([3, 1, 4, 0, 2])
  np.testing.assert_allclose(m.apply(v, z, ni[:, perm], nt[:, perm]), out, atol=1e-5)
  assert np.abs(np.asarray(m.apply(v, z, ni, nt[:, ::-1] * 2)) - np.asarray(out)).max() > 1e-4


def test_query_attention_weights():
  m = _model()
  z, ni, nt = _inputs()
  v = m.init(jax.random.key(0), z, ni, nt)
  out, inter = m.apply(v, z, ni, nt, mutable=["intermediates"])
  w = np.asarray(R.query_attention(inter["intermediates"]))
  assert w.shape == (B, K + 1)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out, m.apply(v, z, ni, nt), atol=1e-6)


def test_bfloat16_compute_is_close_to_float32():
  z, ni, nt = _inputs()
  m32, m16 = _model(), _model(dtype="bfloat16")
  v = m32.init(jax.random.key(0), z, ni, nt)
  o32, o16 = m32.apply(v, z, ni, nt), m16.apply(v, z, ni, nt)
  assert o16.dtype == jnp.float32
  scale = np.abs(np.asarray(o32)).max()
  assert np.abs(np.asarray(o16) - np.asarray(o32)).max() <= 0.05 * scale


def test_bad_switches_are_clear_errors():
  with pytest.raises(ValueError, match="modalities"):
    R.ModelConfig(num_classes=3, modalities="audio")
  with pytest.raises(ValueError, match="dtype"):
    R.ModelConfig(num_classes=3, dtype="int8")
  m = _model()
  with pytest.raises(ValueError, match="use_retrieval"):
    m.init(jax.random.key(0), _inputs()[0])
