"""Flax Qwen2.5-VL / Qwen2-VL vs the HF PyTorch models: logits, on tiny random configs.

A batch of two sequences (one left-padded) with two images of different sizes; the HF model
gets the same inputs its processor would give (pixel_values flattened, image_grid_thw,
mm_token_type_ids).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import torch  # noqa: E402
import transformers  # noqa: E402

from retformer_jax.convert import hf, mapping, safetensors_io  # noqa: E402
from retformer_jax.models import qwen2_5_vl  # noqa: E402
from retformer_jax.models.qwen_config import QwenVLConfig  # noqa: E402

IMG, VS, VE, PAD = 290, 292, 293, 0
TEXT = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [2, 3, 3]})
IDS = dict(image_token_id=IMG, video_token_id=291, vision_start_token_id=VS,
           vision_end_token_id=VE)


def _hf_model(kind: str, tie: bool = False):
  torch.manual_seed(0)
  if kind == "qwen2_5_vl":
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(TEXT), vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            patch_size=4, window_size=16, fullatt_block_indexes=[1], spatial_merge_size=2,
            temporal_patch_size=2), tie_word_embeddings=tie, **IDS)
    model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
  else:
    cfg = transformers.Qwen2VLConfig(
        text_config=dict(TEXT), vision_config=dict(
            depth=2, embed_dim=32, mlp_ratio=2, num_heads=2, hidden_size=64, patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2), tie_word_embeddings=tie, **IDS)
    model = transformers.Qwen2VLForConditionalGeneration(cfg)
  with torch.no_grad():  # non-trivial norms and biases
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name or "ln_q" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _inputs(rng):
  """Two rows; row 1 left-padded. Images: grid (1,4,6) -> 6 tokens, (1,8,4) -> 8 tokens."""
  grid = np.array([[1, 4, 6], [1, 8, 4]])
  row0 = [5, 6, 7, VS] + [IMG] * 6 + [VE] + [8, 9, 10, 11, 12]
  row1 = [13, VS] + [IMG] * 8 + [VE] + [14, 15]
  T = max(len(row0), len(row1))
  ids = np.full((2, T), PAD, np.int64)
  mask = np.zeros((2, T), np.int64)
  ids[0, T - len(row0):], mask[0, T - len(row0):] = row0, 1
  ids[1, T - len(row1):], mask[1, T - len(row1):] = row1, 1
  pixels = rng.standard_normal((24 + 32, 3 * 2 * 4 * 4)).astype(np.float32)
  return ids, mask, pixels, grid


@pytest.mark.parametrize("kind,tie", [
    ("qwen2_5_vl", False), pytest.param("qwen2_vl", True, marks=pytest.mark.slow)])
def test_logits_match_hf(tmp_path, kind, tie):
  model_hf = _hf_model(kind, tie)
  model_hf.save_pretrained(tmp_path)
  model, params = hf.load_qwen2_5_vl(str(tmp_path))
  ids, mask, pixels, grid = _inputs(np.random.default_rng(0))
  with torch.no_grad():
    ref = model_hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grid),
                   mm_token_type_ids=torch.tensor((ids == IMG).astype(np.int64))).logits.numpy()
  ours = np.asarray(model.apply({"params": params}, ids, pixels, grid, mask))
  assert ours.shape == ref.shape == (2, ids.shape[1], 300)
  valid = mask.astype(bool)
  scale = np.abs(ref[valid]).max()
  err = np.abs(ours[valid] - ref[valid]).max()
  assert err <= 1e-4 * scale, (err, scale)


@pytest.mark.slow
def test_vision_features_match_hf(tmp_path):
  model_hf = _hf_model("qwen2_5_vl")
  model_hf.save_pretrained(tmp_path)
  model, params = hf.load_qwen2_5_vl(str(tmp_path))
  _, _, pixels, grid = _inputs(np.random.default_rng(1))
  with torch.no_grad():
    ref = model_hf.model.visual(torch.tensor(pixels), grid_thw=torch.tensor(grid))
    ref = ref.pooler_output.numpy()
  lay = model.apply({"params": params}, grid, method=lambda m, g: m.visual.layout(g, pad_to=64))
  ours = model.apply({"params": params}, np.concatenate([pixels, np.zeros((8, 96), np.float32)]),
                     lay.perm, lay.rot_hw, lay.full_seg, lay.win_seg, lay.unperm,
                     method="image_features")
  ours = np.asarray(ours)[:lay.num_tokens]
  np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


def test_language_model_prefix_layout_is_accepted(tmp_path):
  """transformers 4.5x names (model.language_model.*, model.visual.*) load the same weights."""
  model_hf = _hf_model("qwen2_5_vl")
  model_hf.save_pretrained(tmp_path / "hub")
  src = safetensors_io.SafetensorsFolder(str(tmp_path / "hub"))
  renamed = {}
  for k in src.keys():
    v = np.array(src.get(k))
    if k.startswith("model."):
      k = "model.language_model." + k[len("model."):]
    elif k.startswith("visual."):
      k = "model." + k
    renamed[k] = v
  (tmp_path / "v4").mkdir()
  safetensors_io.save_file(renamed, str(tmp_path / "v4" / "model.safetensors"))
  (tmp_path / "v4" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
  _, a = hf.load_qwen2_5_vl(str(tmp_path / "hub"))
  _, b = hf.load_qwen2_5_vl(str(tmp_path / "v4"))
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def test_bad_checkpoint_names_the_tensor(tmp_path):
  model_hf = _hf_model("qwen2_5_vl")
  model_hf.save_pretrained(tmp_path)
  src = safetensors_io.SafetensorsFolder(str(tmp_path))
  tensors = {k: np.array(src.get(k)) for k in src.keys()}
  tensors.pop("model.layers.1.mlp.up_proj.weight")
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(7, np.float32)
  tensors["visual.extra.weight"] = np.zeros(3, np.float32)
  safetensors_io.save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(mapping.WeightImportError) as e:
    hf.load_qwen2_5_vl(str(tmp_path))
  msg = str(e.value)
  assert "model.layers.1.mlp.up_proj.weight" in msg
  assert "model.layers.0.self_attn.q_proj.bias" in msg
  assert "visual.extra.weight" in msg


def _cfg_7b():
  return {
      "model_type": "qwen2_5_vl", "vocab_size": 152064, "hidden_size": 3584,
      "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
      "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
      "tie_word_embeddings": False,
      "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
                        "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14,
                        "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                        "fullatt_block_indexes": [7, 15, 23, 31], "in_chans": 3}}


def test_full_size_weights_shard_over_model_axis():
  """Every big 7B matrix has a logical axis the config maps to the `model` mesh axis."""
  import flax.linen as nn
  from flax import traverse_util

  from configs import common

  rules = common.get_config().mesh.axis_rules
  model = qwen2_5_vl.build(QwenVLConfig.from_hf_dict(_cfg_7b()))
  specs = traverse_util.flatten_dict(qwen2_5_vl.logical_specs(model), sep="/")
  shapes = traverse_util.flatten_dict(qwen2_5_vl.abstract_params(model), sep="/")
  for name, spec in specs.items():
    mesh_axes = nn.logical_to_mesh_axes(spec, rules)
    assert len(spec) == len(shapes[name].shape), name
    if np.prod(shapes[name].shape) >= 1 << 22:
      assert "model" in tuple(mesh_axes), (name, spec)


def test_full_size_parameter_count_matches_hf():
  """Qwen2.5-VL-7B shapes (eval_shape only, no memory) have exactly HF's parameter count."""
  cfg7b = _cfg_7b()
  model = qwen2_5_vl.build(QwenVLConfig.from_hf_dict(cfg7b))
  ours = qwen2_5_vl.num_params(qwen2_5_vl.abstract_params(model))
  with torch.device("meta"):
    ref_model = transformers.Qwen2_5_VLForConditionalGeneration(
        transformers.Qwen2_5_VLConfig(**{k: v for k, v in cfg7b.items() if k != "model_type"}))
  assert ours == sum(p.numel() for p in ref_model.parameters())


@pytest.mark.slow
def test_kv_cache_prefill_then_extend_equals_full_forward(tmp_path):
  """A prefix run once (K/V kept), then the rest of the sequence against it: same logits."""
  from retformer_jax.models import qwen2_5_vl

  _hf_model("qwen2_5_vl").save_pretrained(tmp_path)
  model, params = hf.load_qwen2_5_vl(str(tmp_path))
  ids, mask, pixels, grid = _inputs(np.random.default_rng(2))
  ids, mask = ids[:1], mask[:1]  # row 0: first image only
  pixels, grid = pixels[:24], grid[:1]
  full = np.asarray(model.apply({"params": params}, ids, pixels, grid, mask))
  arrays = qwen2_5_vl.prepare_inputs(model.cfg, ids, grid, mask)
  v = {"params": params}
  feats = model.apply(v, pixels, *(arrays[k] for k in ("perm", "rot_hw", "full_seg", "win_seg",
                                                       "unperm")), method="image_features")
  x = model.apply(v, ids, model.apply(v, ids, method="embed"), feats,
                  method="merge_image_tokens")
  P = 9  # splits the sequence inside the image-token run
  pos, m = arrays["positions"], arrays["attention_mask"]
  pre = model.apply(v, x[:, :P], pos[:, :, :P], m[:, :P], np.array([P - 1]), collect_kv=True,
                    method="decode")
  ext = model.apply(v, x[:, P:], pos[:, :, P:], m[:, P:], np.array([ids.shape[1] - P - 1]),
                    prefix_kv=pre["kv"], prefix_mask_bp=m[:, :P], output="all", method="decode")
  np.testing.assert_allclose(np.asarray(ext["logits"]), full[:, P:],
                             atol=1e-4 * np.abs(full).max(), rtol=0)
