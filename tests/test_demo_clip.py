"""The embedded demo CLIP: a complete HF folder, loaded through the real loaders, deterministic."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from retformer_jax.convert import hf
from retformer_jax.data.clip_preprocess import ClipPreprocessor
from retformer_jax.demo.clip import FILES, build_demo_clip

CORPUS = ["a photo of a cat.", "a photo of a dog.", "a small red car on a wet road",
          "two birds in a tree"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return build_demo_clip(str(tmp_path_factory.mktemp("w") / "demo_clip"), CORPUS)


def _read_all(folder):
  return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def test_folder_is_complete_and_consistent(folder):
  assert sorted(os.listdir(folder)) == sorted(FILES)  # no temporary files left behind
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  with open(os.path.join(folder, "config.json")) as f:
    cfg = json.load(f)
  assert cfg["text_config"]["eos_token_id"] == tok.eos_token_id != 2
  assert cfg["text_config"]["bos_token_id"] == tok.bos_token_id
  assert cfg["text_config"]["pad_token_id"] == tok.pad_token_id
  assert cfg["text_config"]["vocab_size"] == len(tok)
  assert tok.unk_token_id is not None and tok("zebra")["input_ids"][1] == tok.unk_token_id
  proc = transformers.AutoImageProcessor.from_pretrained(folder)
  assert proc.crop_size["height"] == cfg["vision_config"]["image_size"] == 32


def test_loads_through_our_loader_and_matches_transformers(folder):
  model, params = hf.load_clip(folder)
  pre = ClipPreprocessor.from_folder(folder)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((32, 32), (40, 57))]
  pixels = pre.images(images)
  ids, mask = pre.texts(CORPUS[:3])
  img_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
  txt_fn = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=model.encode_text))
  img, txt = np.asarray(img_fn(params, pixels)), np.asarray(txt_fn(params, ids, mask))
  assert img.shape == (2, model.config.projection_dim)
  assert txt.shape == (3, model.config.projection_dim)

  ref_model = transformers.CLIPModel.from_pretrained(folder).eval()
  with torch.no_grad():
    ref_img = ref_model.get_image_features(
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).pooler_output.numpy()
    ref_txt = ref_model.get_text_features(
        input_ids=torch.from_numpy(ids.astype(np.int64)),
        attention_mask=torch.from_numpy(mask.astype(np.int64))).pooler_output.numpy()
  np.testing.assert_allclose(img, ref_img, atol=1e-4, rtol=0)
  np.testing.assert_allclose(txt, ref_txt, atol=1e-4, rtol=0)
  assert np.abs(txt[0] - txt[1]).max() > 1e-3  # different captions, different features


def test_deterministic_reused_and_rebuilt(folder, tmp_path):
  other = build_demo_clip(str(tmp_path / "again"), CORPUS)
  assert _read_all(other) == _read_all(folder)

  stamp = os.stat(os.path.join(other, "model.safetensors")).st_mtime_ns
  assert build_demo_clip(other, CORPUS) == other
  assert os.stat(os.path.join(other, "model.safetensors")).st_mtime_ns == stamp  # reused

  os.remove(os.path.join(other, "tokenizer.json"))  # incomplete: rebuilt identically
  build_demo_clip(other, CORPUS)
  assert _read_all(other) == _read_all(folder)

  build_demo_clip(other, CORPUS, seed=1)  # other inputs: replaced
  assert _read_all(other)["model.safetensors"] != _read_all(folder)["model.safetensors"]
  assert sorted(os.listdir(tmp_path)) == ["again"]  # nothing left beside it


def test_empty_corpus_is_refused(tmp_path):
  with pytest.raises(ValueError, match="corpus"):
    build_demo_clip(str(tmp_path / "c"), [])
