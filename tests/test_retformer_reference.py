"""RetFormer against a NumPy reference written from SPEC.md ("RetFormer model").

The reference reads the Flax parameters by name and recomputes the forward pass in float64:
  E^I = [z; v^I_1..k],  E^T = [0; v^T_1..k]
  per layer, pre-LN, both attentions reading the OLD streams:
    I' = Att(q=T, k=I, v=I) + I,   T' = Att(q=I, k=T, v=T) + T
    I'' = I' + MLP(LN(I')),        T'' = T' + MLP(LN(T'))
  L_R = head([I_0; T_0]),  L_I = MLP(z),  f = (tau / 2) (L_I + L_R)
Parameters are perturbed away from their init (LayerNorm scale 1 / bias 0, zero biases), so a
dropped or misplaced term changes the output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from retformer_jax.models import retformer as R

B, K, D, C = 3, 5, 16, 7
TOL = 1e-5


# ---------------------------------------------------------------- NumPy reference (float64)


def layer_norm(x, p, eps=1e-6):
  """flax nn.LayerNorm: biased variance over the last axis, epsilon 1e-6."""
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(x):
  """flax nn.gelu is jax.nn.gelu, whose default is the tanh approximation (approximate=True)."""
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def dense(x, p):
  return x @ p["kernel"] + p["bias"]


def mlp(x, p):
  return dense(gelu(dense(x, p["fc1"])), p["fc2"])


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def attention(xq, xkv, p):
  """Multi-head attention of queries xq [B, q, d] over xkv [B, s, d]; also returns the weights.

  query / key / value kernels are [d, heads, head_dim] (key has no bias), out is
  [heads, head_dim, d]; logits are scaled by 1 / sqrt(head_dim).
  """
  q = np.einsum("bqd,dhk->bqhk", xq, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bsd,dhk->bshk", xkv, p["key"]["kernel"])
  v = np.einsum("bsd,dhk->bshk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
  w = softmax(np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1]))
  o = np.einsum("bhqs,bshk->bqhk", w, v)
  return np.einsum("bqhk,hkd->bqd", o, p["out"]["kernel"]) + p["out"]["bias"], w


def cross_fusion_layer(i, t, p):
  """One cross-fusion layer; returns (I'', T'', weights of image-queries-text)."""
  ni, nt = layer_norm(i, p["ln_image"]), layer_norm(t, p["ln_text"])
  a_i, _ = attention(nt, ni, p["text_queries_image"])  # text queries image
  a_t, w_t = attention(ni, nt, p["image_queries_text"])  # image queries text
  i1, t1 = a_i + i, a_t + t  # both from the old streams
  i2 = i1 + mlp(layer_norm(i1, p["ln_image_mlp"]), p["mlp_image"])
  t2 = t1 + mlp(layer_norm(t1, p["ln_text_mlp"]), p["mlp_text"])
  return i2, t2, w_t


def self_fusion_layer(x, p):
  n = layer_norm(x, p["ln"])
  a, w = attention(n, n, p["self_attention"])
  x1 = x + a
  return x1 + mlp(layer_norm(x1, p["ln_mlp"]), p["mlp"]), w


def retformer(p, cfg: R.ModelConfig, z, nb_image, nb_text):
  """(fused logits [B, C], query-slot attention [B, k + 1] averaged over heads and layers)."""
  z, nb_image, nb_text = (np.asarray(a, np.float64) for a in (z, nb_image, nb_text))
  if cfg.backbone_hidden:
    logits_i = dense(gelu(dense(z, p["backbone_fc1"])), p["backbone_head"])
  else:
    logits_i = dense(z, p["backbone_head"])
  if not cfg.use_retrieval:
    return cfg.tau / 2 * logits_i, None
  project = cfg.width and cfg.width != z.shape[-1]
  rows = []
  if cfg.modalities == "image_text":
    e_image = np.concatenate([z[:, None], nb_image], 1)
    e_text = np.concatenate([np.zeros_like(z)[:, None], nb_text], 1)  # no label leak
    if project:  # each stream has its own projection, applied to the zero slot too
      e_image, e_text = dense(e_image, p["proj_image"]), dense(e_text, p["proj_text"])
    i, t = e_image, e_text
    for layer in range(cfg.num_layers):
      i, t, w = cross_fusion_layer(i, t, p[f"fusion_{layer}"])
      rows.append(w[:, :, 0].mean(1))
    query = np.concatenate([i[:, 0], t[:, 0]], -1)
  else:
    nb = nb_image if cfg.modalities == "image" else nb_text
    x = np.concatenate([z[:, None], nb], 1)
    if project:
      x = dense(x, p["proj"])
    for layer in range(cfg.num_layers):
      x, w = self_fusion_layer(x, p[f"fusion_{layer}"])
      rows.append(w[:, :, 0].mean(1))
    query = x[:, 0]
  # SPEC's head h reads the query slot; the LayerNorm before the linear head (`ln_head`) is an
  # implementation choice of retformer.py, mirrored here.
  logits_r = dense(layer_norm(query, p["ln_head"]), p["retrieval_head"])
  attn = np.mean(rows, 0) if rows else None
  return cfg.tau / 2 * (logits_i + logits_r), attn


# ---------------------------------------------------------------- helpers


def _inputs(seed=0):
  r = np.random.default_rng(seed)
  f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
  return f(B, D), f(B, K, D), f(B, K, D)


def _perturbed(params, seed):
  """Every leaf moved away from its init: LayerNorm scales ~ 1 +- 0.3, biases ~ +-0.3,
  kernels scaled by 1.5 (sharper attention)."""
  r = np.random.default_rng(seed)

  def move(path, x):
    name = path[-1].key
    x = np.asarray(x, np.float64)
    if name == "scale":
      x = x + 0.3 * r.normal(size=x.shape)
    elif name == "bias":
      x = x + 0.3 * r.normal(size=x.shape)
    else:
      x = 1.5 * x
    return x.astype(np.float32)

  return jax.tree_util.tree_map_with_path(move, params)


def _model_and_params(seed=0, **kw):
  cfg = dict(num_classes=C, num_layers=2, num_heads=4, backbone_hidden=0, tau=3.0)
  cfg.update(kw)
  cfg = R.ModelConfig(**cfg)
  model = R.RetFormer(cfg)
  z, ni, nt = _inputs(seed)
  params = nn.unbox(model.init(jax.random.key(seed), z, ni, nt))["params"]
  return cfg, model, _perturbed(params, seed + 100)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---------------------------------------------------------------- tests


def test_reference_gelu_is_the_one_flax_uses():
  x = np.linspace(-4, 4, 81)
  np.testing.assert_allclose(np.asarray(nn.gelu(x.astype(np.float32))), gelu(x), atol=1e-6)


def test_one_cross_fusion_layer_matches_reference():
  cfg = R.ModelConfig(num_classes=C, num_heads=4)
  layer = R.CrossFusionLayer(cfg)
  r = np.random.default_rng(3)
  i = r.normal(size=(B, K + 1, D)).astype(np.float32)
  t = r.normal(size=(B, K + 1, D)).astype(np.float32)
  params = _perturbed(nn.unbox(layer.init(jax.random.key(3), i, t, train=False))["params"], 4)
  got_i, got_t = layer.apply({"params": params}, i, t, train=False)
  want_i, want_t, _ = cross_fusion_layer(i.astype(np.float64), t.astype(np.float64),
                                         _f64(params))
  assert np.abs(np.asarray(got_i) - want_i).max() <= TOL
  assert np.abs(np.asarray(got_t) - want_t).max() <= TOL
  # The query slot of the text stream is driven by the image stream, not only by itself.
  assert np.abs(want_t[:, 0] - t[:, 0]).max() > 0.1


CASES = {
    "image_text": dict(),
    "image_text_projected_mlp_backbone": dict(width=8, backbone_hidden=12, num_layers=3),
    "image": dict(modalities="image"),
    "text": dict(modalities="text"),
    "text_projected": dict(modalities="text", width=8, backbone_hidden=12, num_heads=2),
    "mlp_only": dict(use_retrieval=False, backbone_hidden=12),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_reference(case):
  cfg, model, params = _model_and_params(seed=1, **CASES[case])
  z, ni, nt = _inputs(seed=2)
  got = np.asarray(model.apply({"params": params}, z, ni, nt))
  want, _ = retformer(_f64(params), cfg, z, ni, nt)
  assert got.dtype == np.float32 and got.shape == (B, C)
  assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
  assert np.abs(want).max() > 0.5  # logits of a useful size: the tolerance is not vacuous


def test_query_attention_matches_reference():
  cfg, model, params = _model_and_params(seed=5, num_layers=3)
  z, ni, nt = _inputs(seed=6)
  _, inter = model.apply({"params": params}, z, ni, nt, mutable=["intermediates"])
  got = np.asarray(R.query_attention(inter["intermediates"]))
  _, want = retformer(_f64(params), cfg, z, ni, nt)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert want[:, 1:].max() > 1.5 / (K + 1)  # not uniform: the comparison has teeth
