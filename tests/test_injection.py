"""Visual re-injection: our decoder vs the HF model with the formula applied in NumPy.

The HF PyTorch model runs one sample at a time (as the reference does); forward hooks record the
input embeddings (memory M), each layer's last-position hidden state (for the entropy trigger,
computed here in NumPy) and, in the layer the trigger should arm, replace the FFN output F by
(1 - alpha) F + alpha Â with Â computed in NumPy from the formula. Our batched, padded forward
must give the same logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from retformer_jax.convert import hf
from retformer_jax.models.qwen_injection import InjectionConfig

IMG, VS, VE = 290, 292, 293
LAYERS = 8
LO, HI = 1, 7  # layers 2..6 watched; layers 3..7 can be armed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  torch.manual_seed(1)
  cfg = transformers.Qwen2_5_VLConfig(
      text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-6, rope_parameters={
                           "rope_type": "default", "rope_theta": 10000.0,
                           "mrope_section": [2, 3, 3]}),
      vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                         out_hidden_size=64, patch_size=4, window_size=16,
                         fullatt_block_indexes=[1], spatial_merge_size=2, temporal_patch_size=2),
      image_token_id=IMG, video_token_id=291, vision_start_token_id=VS, vision_end_token_id=VE)
  ref = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # sharper, layer-dependent logits so the entropies differ
    ref.lm_head.weight.mul_(1000.0)
    for layer in ref.model.language_model.layers:
      layer.mlp.down_proj.weight.mul_(4.0)
  path = tmp_path_factory.mktemp("inj")
  ref.save_pretrained(path)
  model, params = hf.load_qwen2_5_vl(str(path))
  return ref, model, params


def _samples():
  rng = np.random.default_rng(0)
  rows = [[5, 6, VS] + [IMG] * 6 + [VE] + list(rng.integers(1, 280, 9)),
          [7, VS] + [IMG] * 8 + [VE] + list(rng.integers(1, 280, 5))]
  grids = [np.array([[1, 4, 6]]), np.array([[1, 8, 4]])]
  pixels = [rng.standard_normal((24, 96)).astype(np.float32),
            rng.standard_normal((32, 96)).astype(np.float32)]
  return rows, grids, pixels


def _np_inject(x, f, mem, gate_w, down_w, alpha):
  """The formula, straight from the description (one sample, no padding)."""
  k = np.abs(gate_w).mean() / np.abs(mem).mean() * mem
  v = np.abs(down_w).mean() / np.abs(mem).mean() * mem
  s = x @ k.T
  a = (s / (1.0 + np.exp(-s))) @ v
  a_hat = a * np.abs(f).mean() / np.abs(a).mean()
  return (1 - alpha) * f + alpha * a_hat


def _hf_run(ref, ids, grid, pixels, cfg: InjectionConfig | None, armed: int | None,
            final_norm: bool = False):
  """Logits [T, V] of one sample, per-layer top-k entropies (read through the final RMSNorm
  when `final_norm`), with F replaced in `armed`."""
  layers = ref.model.language_model.layers
  seen: dict = {"h": []}
  hooks = [layers[0].register_forward_pre_hook(
      lambda m, args: seen.__setitem__("embeds", args[0][0].detach().double().numpy()))]
  for layer in layers:
    hooks.append(layer.register_forward_hook(
        lambda m, args, out: seen["h"].append((out[0] if isinstance(out, tuple) else out)[0, -1])))
  if armed is not None:
    def replace(module, args, out):
      x = args[0][0].detach().double().numpy()
      mem = seen["embeds"]
      if cfg.memory == "image":
        mem = mem[np.asarray(ids) == IMG]
      mixed = _np_inject(x, out[0].detach().double().numpy(), mem,
                         module.gate_proj.weight.detach().double().numpy(),
                         module.down_proj.weight.detach().double().numpy(), cfg.alpha)
      return torch.tensor(mixed, dtype=out.dtype)[None]
    hooks.append(layers[armed].mlp.register_forward_hook(replace))
  try:
    with torch.no_grad():
      out = ref(input_ids=torch.tensor(np.asarray([ids])), pixel_values=torch.tensor(pixels),
                image_grid_thw=torch.tensor(grid),
                mm_token_type_ids=torch.tensor((np.asarray([ids]) == IMG).astype(np.int64)))
  finally:
    for h in hooks:
      h.remove()
  head = ref.lm_head.weight.detach().double().numpy()
  norm = ref.model.language_model.norm
  ent = []
  for h in seen["h"]:
    h = h.detach().double().numpy()
    if final_norm:
      h = h / np.sqrt(np.mean(h ** 2) + norm.variance_epsilon) * norm.weight.detach().double().numpy()
    top = np.sort(h @ head.T)[-10:]
    p = np.exp(top - top.max())
    p /= p.sum()
    ent.append(-(p * np.log(p)).sum() / np.log(10))
  return out.logits[0].detach().double().numpy(), np.array(ent)


def _first_fire(ent, tau):
  for l in range(LO + 1, HI):
    if ent[l] > tau:
      return l + 1
  return None


def _ours(model, params, rows, grids, pixels, cfg):
  T = max(len(r) for r in rows)
  ids = np.zeros((len(rows), T), np.int64)
  mask = np.zeros_like(ids)
  for b, r in enumerate(rows):  # left padding
    ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
  logits = model.apply({"params": params}, ids, np.concatenate(pixels), np.concatenate(grids),
                       mask, injection=cfg)
  return [np.asarray(logits[b, T - len(r):], np.float64) for b, r in enumerate(rows)]


@pytest.mark.parametrize("memory,final_norm", [("all", True), ("image", False)])
def test_each_sample_arms_its_own_layer_and_matches_the_formula(models, memory, final_norm):
  ref, model, params = models
  rows, grids, pixels = _samples()
  ents = [_hf_run(ref, r, g, p, None, None, final_norm)[1]
          for r, g, p in zip(rows, grids, pixels)]
  # A threshold at which the two samples arm different layers, one past the first armable one.
  cands = sorted(set(np.concatenate([e[LO + 1:HI] for e in ents])))
  taus = [(a + b) / 2 for a, b in zip(cands, cands[1:])]
  pick = [t for t in taus if len({_first_fire(e, t) for e in ents}) == 2
          and None not in {_first_fire(e, t) for e in ents}
          and max(_first_fire(e, t) for e in ents) > LO + 2]
  assert pick, f"fixture gives no usable threshold; entropies {ents}"
  tau = pick[0]
  cfg = InjectionConfig(enabled=True, tau=float(tau), layer_lo=LO, layer_hi=HI, memory=memory,
                        final_norm=final_norm)
  armed = [_first_fire(e, tau) for e in ents]
  assert armed[0] != armed[1]
  ours = _ours(model, params, rows, grids, pixels, cfg)
  plain = _ours(model, params, rows, grids, pixels, None)
  for b, (r, g, p) in enumerate(zip(rows, grids, pixels)):
    want, _ = _hf_run(ref, r, g, p, cfg, armed[b], final_norm)
    scale = np.abs(want).max()
    np.testing.assert_allclose(ours[b], want, atol=1e-4 * scale, rtol=0)
    assert np.abs(plain[b] - want).max() > 1e-3 * scale  # the injection mattered


def test_no_layer_fires_above_every_entropy(models):
  ref, model, params = models
  rows, grids, pixels = _samples()
  cfg = InjectionConfig(enabled=True, tau=1.01, layer_lo=LO, layer_hi=HI)
  ours = _ours(model, params, rows, grids, pixels, cfg)
  for b, (r, g, p) in enumerate(zip(rows, grids, pixels)):
    want, _ = _hf_run(ref, r, g, p, None, None)
    np.testing.assert_allclose(ours[b], want, atol=1e-4 * np.abs(want).max(), rtol=0)


def test_config_is_checked():
  with pytest.raises(ValueError, match="memory"):
    InjectionConfig(memory="text")
  with pytest.raises(ValueError, match="alpha"):
    InjectionConfig(alpha=1.5)
