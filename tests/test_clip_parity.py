"""Our Flax CLIP, loaded through `hf.load_clip`, against transformers' PyTorch CLIPModel."""

import jax
import numpy as np
import pytest
import torch

from retformer_jax.convert import clip_import, hf
from tiny_clip import padded_ids, save_hf_clip

TOL = 1e-4

# name -> (HF config kwargs, token-batch kwargs)
VARIANTS = {
    # Real EOS id (post transformers #24773) that is also the pad id: pooled at its first
    # occurrence, which is not the highest id in the row.
    "quickgelu_eos3": (dict(vision_act="quick_gelu", text_act="gelu", image_size=30,
                            patch_size=6, eos_token_id=3),
                       dict(bos=97, eos=3, pad=3, token_range=(4, 97))),
    # Legacy eos_token_id == 2: pooled at the highest id in the row.
    "gelu_legacy_eos2": (dict(vision_act="gelu", text_act="quick_gelu", image_size=32,
                              patch_size=8, eos_token_id=2),
                         dict(bos=97, eos=98, pad=0, token_range=(3, 97))),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp(request.param))
  cfg_kw, ids_kw = VARIANTS[request.param]
  torch_model = save_hf_clip(folder, **cfg_kw)
  return folder, torch_model, cfg_kw["image_size"], ids_kw


def _encoders(model):
  """Jitted (image, text) feature functions: one compile each instead of op-by-op dispatch."""
  img = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
  txt = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=model.encode_text))
  return img, txt


def _reference(torch_model, pixels_bhwc, ids, mask):
  with torch.no_grad():
    img = torch_model.get_image_features(
        pixel_values=torch.from_numpy(pixels_bhwc.transpose(0, 3, 1, 2))).pooler_output
    txt = torch_model.get_text_features(input_ids=torch.from_numpy(ids),
                                        attention_mask=torch.from_numpy(mask)).pooler_output
  return img.numpy(), txt.numpy()


@pytest.mark.parametrize("scan_layers", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_features_match_hf(variant, scan_layers):
  folder, torch_model, size, ids_kw = variant
  pixels = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype(np.float32)
  ids, mask = padded_ids([5, 3, 12], 12, **ids_kw)
  ref_img, ref_txt = _reference(torch_model, pixels, ids, mask)

  model, params = hf.load_clip(folder, scan_layers=scan_layers)
  img_fn, txt_fn = _encoders(model)
  img, txt = np.asarray(img_fn(params, pixels)), np.asarray(txt_fn(params, ids, mask))

  assert img.shape == ref_img.shape == (3, 24) and txt.shape == ref_txt.shape == (3, 24)
  assert np.abs(ref_img).max() > 0.1 and np.abs(ref_txt).max() > 0.1
  np.testing.assert_allclose(img, ref_img, atol=TOL, rtol=0)
  np.testing.assert_allclose(txt, ref_txt, atol=TOL, rtol=0)


def test_padding_does_not_change_text_features(variant):
  """A row's features do not depend on how far the batch is padded."""
  folder, _, _, ids_kw = variant
  model, params = hf.load_clip(folder)
  ids, mask = padded_ids([6], 6, **ids_kw)
  pad_ids = np.concatenate([ids, np.full((1, 7), ids_kw["pad"])], axis=1)
  pad_mask = np.concatenate([mask, np.zeros((1, 7), np.int64)], axis=1)
  _, txt_fn = _encoders(model)
  a, b = txt_fn(params, ids, mask), txt_fn(params, pad_ids, pad_mask)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_is_close(variant):
  folder, torch_model, size, ids_kw = variant
  pixels = np.random.default_rng(2).standard_normal((2, size, size, 3)).astype(np.float32)
  ids, mask = padded_ids([4, 9], 9, **ids_kw)
  ref_img, ref_txt = _reference(torch_model, pixels, ids, mask)
  model, params = hf.load_clip(folder, dtype="bfloat16")
  img_fn, txt_fn = _encoders(model)
  img = np.asarray(img_fn(params, pixels), np.float32)
  txt = np.asarray(txt_fn(params, ids, mask), np.float32)
  for ours, ref in ((img, ref_img), (txt, ref_txt)):
    assert np.abs(ours - ref).max() <= 0.05 * np.abs(ref).max()


@pytest.mark.slow
def test_save_clip_round_trips_through_transformers(variant, tmp_path):
  """save_clip writes a folder that transformers and load_clip both read back identically."""
  import transformers

  folder, torch_model, size, ids_kw = variant
  model, params = hf.load_clip(folder, scan_layers=False)
  out = str(tmp_path / "resaved")
  clip_import.save_clip(model, params, out)
  reloaded = transformers.CLIPModel.from_pretrained(out).eval()
  for (name, a), (_, b) in zip(torch_model.state_dict().items(),
                               reloaded.state_dict().items()):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
  assert reloaded.config.text_config.eos_token_id == torch_model.config.text_config.eos_token_id
  model2, params2 = hf.load_clip(out, scan_layers=True)
  pixels = np.random.default_rng(3).standard_normal((1, size, size, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(_encoders(model)[0](params, pixels)),
                             np.asarray(_encoders(model2)[0](params2, pixels)), atol=1e-6)
