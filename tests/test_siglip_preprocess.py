"""SigLIP preprocessing equals transformers' SiglipImageProcessorPil pixel for pixel, and texts are
padded to the tower's length as the models were trained."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from retformer_jax.data.siglip_preprocess import SiglipPreprocessor, image_transform
from tiny_siglip import save_hf_siglip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("siglip"))
  save_hf_siglip(path, image_size=30, patch_size=6, max_pos=16, layers=1,
                 corpus=["a photo of a cat", "a dog on the grass"])
  return path


def _images():
  rng = np.random.default_rng(0)
  sizes = [(17, 45), (64, 30), (30, 30), (200, 121), (5, 9)]
  out = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
  grey = rng.integers(0, 256, size=(40, 23), dtype=np.uint8)
  out.append(Image.fromarray(grey, mode="L"))  # converted to RGB by both
  return out


@pytest.mark.parametrize("proc_kw", [
    {},
    {"size": {"height": 30, "width": 30}},
    {"size": {"height": 24, "width": 36}, "resample": 2},
    {"size": {"height": 30, "width": 30}, "image_mean": [0.4, 0.5, 0.6],
     "image_std": [0.2, 0.3, 0.25]},
])
def test_pixels_equal_hf_pil_processor(proc_kw, tmp_path):
  import transformers

  ref_proc = transformers.SiglipImageProcessorPil(**proc_kw)
  ref_proc.save_pretrained(str(tmp_path))
  with open(tmp_path / "preprocessor_config.json") as f:
    ours = image_transform(json.load(f))
  for im in _images():
    want = ref_proc(images=[im], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    got = ours(im)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_from_folder_images_and_texts(folder):
  import transformers

  pre = SiglipPreprocessor.from_folder(folder)
  ims = _images()[:3]
  ref = transformers.SiglipImageProcessorPil.from_pretrained(folder)
  want = ref(images=ims, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(pre.images(ims), want)
  assert pre.image_hw == (30, 30)

  texts = ["a photo of a cat", "a dog on the grass " * 10]
  ids, mask = pre.texts(texts)
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  ref_ids = tok(texts, padding="max_length", truncation=True, max_length=16,
                return_tensors="np")["input_ids"]
  assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, ref_ids)
  assert (ids[0, 7:] == tok.pad_token_id).all()  # padded to max_length, not to the longest
  assert (mask == 1).all()  # the models attend to the padding, as trained


def test_missing_processor_config_is_named(folder, tmp_path):
  for f in os.listdir(folder):
    if f != "preprocessor_config.json":
      (tmp_path / f).write_bytes(open(os.path.join(folder, f), "rb").read())
  with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
    SiglipPreprocessor.from_folder(str(tmp_path))
