"""Our Flax SigLIP, loaded through `hf.load_siglip`, against transformers' PyTorch SiglipModel;
parameter counts of the released sizes; folders that are refused."""

import json
import os

import jax
import numpy as np
import pytest
import torch

from retformer_jax.convert import hf, mapping, siglip_import
from retformer_jax.models import siglip
from retformer_jax.models.siglip_config import SiglipConfig
from tiny_siglip import VARIANTS, random_ids, save_hf_siglip

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp(request.param))
  kw = VARIANTS[request.param]
  return folder, save_hf_siglip(folder, **kw), kw


def _encoders(model):
  """Jitted (image, text) feature functions: one compile each instead of op-by-op dispatch."""
  img = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
  txt = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=model.encode_text))
  return img, txt


def _close(ours, ref):
  assert ours.shape == ref.shape
  scale = max(1.0, float(np.abs(ref).max()))
  assert np.abs(ref).max() > 0.1
  assert np.abs(np.asarray(ours) - ref).max() <= TOL * scale


@pytest.mark.parametrize("scan_layers", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_features_match_hf(variant, scan_layers):
  folder, torch_model, kw = variant
  size, length = kw["image_size"], kw["max_pos"]
  pixels = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype(np.float32)
  ids = random_ids(3, length)
  mask = np.ones_like(ids)
  mask[1, length // 2:] = 0  # a mask, when given, is applied as transformers applies it
  with torch.no_grad():
    ref_img = torch_model.get_image_features(
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).pooler_output.numpy()
    ref_txt = torch_model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
    ref_masked = torch_model.get_text_features(
        input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
    out = torch_model(input_ids=torch.from_numpy(ids),
                      pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)))

  family, model, params = hf.load_image_text_encoder(folder, scan_layers=scan_layers)
  assert family == "siglip" and isinstance(model, siglip.SigLIP)
  img_fn, txt_fn = _encoders(model)
  _close(img_fn(params, pixels), ref_img)
  _close(txt_fn(params, ids, None), ref_txt)
  _close(txt_fn(params, ids, np.ones_like(ids)), ref_txt)
  _close(txt_fn(params, ids, mask), ref_masked.numpy())
  assert ref_img.shape == (3, 48) and ref_txt.shape == (3, 48)
  # Sigmoid logits: exp(logit_scale) * cos + logit_bias, as SiglipModel.forward.
  _, _, logits = jax.jit(model.apply)({"params": params}, pixels, ids)
  _close(logits, out.logits_per_image.numpy())


def test_load_siglip_gives_the_same_model(variant):
  folder, _, _ = variant
  model, params = hf.load_siglip(folder)
  assert isinstance(model, siglip.SigLIP)
  _, _, params2 = hf.load_image_text_encoder(folder)
  jax.tree.map(np.testing.assert_array_equal, params, params2)


SIZES = {
    # google/siglip-base-patch16-224 and google/siglip-so400m-patch14-384 (model cards).
    "B16_224": dict(hidden=768, layers=12, heads=12, mlp=3072, patch=16, image=224),
    "So400m14_384": dict(hidden=1152, layers=27, heads=16, mlp=4304, patch=14, image=384),
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_param_count_equals_hf(name):
  import transformers

  s = SIZES[name]
  tower = dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"],
               num_attention_heads=s["heads"], intermediate_size=s["mlp"])
  cfg_dict = {"model_type": "siglip",
              "vision_config": dict(tower, patch_size=s["patch"], image_size=s["image"]),
              "text_config": dict(tower, vocab_size=32000, max_position_embeddings=64)}
  with torch.device("meta"):
    ref = transformers.SiglipModel(transformers.SiglipConfig(
        vision_config=cfg_dict["vision_config"], text_config=cfg_dict["text_config"]))
  want = sum(p.numel() for p in ref.parameters())
  for scan in (True, False):
    ours = siglip.abstract_params(siglip.SigLIP(SiglipConfig.from_hf_dict(
        cfg_dict, scan_layers=scan)))
    assert mapping.count_params(ours) == want
  assert want > (200e6 if name == "B16_224" else 800e6)


def test_every_tensor_is_mapped(variant):
  """Import uses every tensor of the folder (position_ids buffers aside) and no rule twice."""
  folder, torch_model, _ = variant
  model, _ = hf.load_siglip(folder, scan_layers=False)
  names = {k for k in torch_model.state_dict() if not k.endswith("position_ids")}
  table = siglip_import.rule_table(False)
  flat = jax.tree_util.tree_flatten_with_path(siglip.abstract_params(model))[0]
  used = set()
  for path, leaf in flat:
    key = "/".join(p.key for p in path)
    rule, m = next((r, r.match(key)) for r in table if r.match(key))
    used.update(rule.source_names(m, leaf.shape)[0])
  assert used == names


def _rewrite_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  for k, v in changes.items():
    section, _, key = k.rpartition(".")
    (cfg[section] if section else cfg)[key] = v
  with open(path, "w") as f:
    json.dump(cfg, f)


def test_naflex_siglip2_and_headless_folders_are_refused(variant, tmp_path):
  import shutil

  folder, _, _ = variant
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)
  _rewrite_config(copy, model_type="siglip2")
  for load in (hf.load_siglip, hf.load_image_text_encoder):
    with pytest.raises(ValueError, match="siglip2.*not supported") as e:
      load(copy)
    assert "\n" not in str(e.value)
  _rewrite_config(copy, **{"model_type": "siglip", "vision_config.vision_use_head": False})
  with pytest.raises(ValueError, match="vision_use_head"):
    hf.load_siglip(copy)
  _rewrite_config(copy, **{"model_type": "bert"})
  with pytest.raises(ValueError, match="CLIP .* or SigLIP"):
    hf.load_image_text_encoder(copy)


def test_missing_tensor_is_named(variant, tmp_path):
  from retformer_jax.convert import safetensors_io

  folder, _, _ = variant
  out = tmp_path / "broken"
  out.mkdir()
  for f in os.listdir(folder):
    if f != "model.safetensors":
      (out / f).write_bytes(open(os.path.join(folder, f), "rb").read())
  reader = safetensors_io.SafetensorsFolder(folder)
  tensors = {k: np.asarray(reader.get(k)) for k in reader.keys()
             if k != "vision_model.head.attention.in_proj_bias"}
  safetensors_io.save_file(tensors, str(out / "model.safetensors"))
  with pytest.raises(mapping.WeightImportError, match="in_proj_bias"):
    hf.load_siglip(str(out))
