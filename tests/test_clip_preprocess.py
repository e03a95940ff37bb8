"""Image preprocessing against transformers' CLIPImageProcessorPil; tokenisation from a folder."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil

from retformer_jax.data.clip_preprocess import ClipPreprocessor, ImageTransform
from retformer_jax.demo.clip import build_demo_clip

SIZES = [(37, 53), (64, 21), (33, 33), (100, 7), (19, 20)]


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.mark.parametrize("kwargs", [
    dict(size={"shortest_edge": 31}, crop_size={"height": 29, "width": 29}),  # odd sizes
    dict(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}, resample=2),
    dict(size={"shortest_edge": 16}, crop_size={"height": 25, "width": 21}),  # crop pads
    dict(size={"height": 27, "width": 35}, crop_size={"height": 23, "width": 30},
         image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 0.75]),
])
def test_images_match_clip_image_processor_pil(kwargs, tmp_path):
  ref_proc = CLIPImageProcessorPil(**kwargs)
  ref_proc.save_pretrained(str(tmp_path))
  with open(tmp_path / "preprocessor_config.json") as f:
    ours = ImageTransform.from_dict(json.load(f))
  images = _images()
  ref = ref_proc(images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  got = np.stack([ours(im) for im in images])
  assert got.dtype == np.float32 and got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


def test_grey_rgba_and_pil_inputs_match(tmp_path):
  ref_proc = CLIPImageProcessorPil(size={"shortest_edge": 20},
                                   crop_size={"height": 20, "width": 20})
  ours = ImageTransform.from_dict(ref_proc.to_dict())
  rng = np.random.default_rng(1)
  grey = rng.integers(0, 256, (30, 41), dtype=np.uint8)
  rgba = rng.integers(0, 256, (25, 26, 4), dtype=np.uint8)
  pil = Image.fromarray(rng.integers(0, 256, (22, 35, 3), dtype=np.uint8))
  # (ours, transformers') inputs: transformers takes a grey image only as a PIL "L" image.
  for im, ref_im in ((grey, Image.fromarray(grey)), (rgba, rgba), (pil, pil),
                     (Image.fromarray(rgba), Image.fromarray(rgba))):
    ref = ref_proc([ref_im], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(ours(im), ref, atol=1e-5, rtol=0)


def test_bad_image_is_a_clear_error():
  ours = ImageTransform.from_dict({})
  with pytest.raises(ValueError, match="uint8"):
    ours(np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[H, W, 1\|3\|4\]"):
    ours(np.zeros((4, 4, 2), np.uint8))


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
  corpus = ["a photo of a cat.", "a photo of a dog.", "a red car parked on the road"]
  return build_demo_clip(str(tmp_path_factory.mktemp("demo") / "clip"), corpus, image_size=24)


def test_preprocessor_from_folder(demo_folder):
  pre = ClipPreprocessor.from_folder(demo_folder)
  assert pre.image_hw == (24, 24)
  ref_proc = CLIPImageProcessorPil.from_pretrained(demo_folder)
  images = _images(2)
  ref = ref_proc(images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(pre.images(images), ref, atol=1e-6, rtol=0)
  assert pre.images([]).shape == (0, 24, 24, 3)


def test_texts_pad_truncate_and_mask(demo_folder):
  pre = ClipPreprocessor.from_folder(demo_folder, max_length=8)
  tok = AutoTokenizer.from_pretrained(demo_folder)
  texts = ["a photo of a cat.", "dog", "a red car parked on the road a red car parked"]
  ids, mask = pre.texts(texts)
  assert ids.shape == mask.shape == (3, 8) and ids.dtype == mask.dtype == np.int32
  ref = tok(texts, padding="max_length", truncation=True, max_length=8)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])
  assert ids[0, 0] == tok.bos_token_id and ids[1, 2] == tok.eos_token_id
  assert ids[2, -1] == tok.eos_token_id and mask[2].all()  # truncated, still ends with EOS
  np.testing.assert_array_equal(mask[1], [1, 1, 1, 0, 0, 0, 0, 0])
  assert (ids[1, 3:] == tok.pad_token_id).all()
  full_ids, _ = ClipPreprocessor.from_folder(demo_folder).texts(["dog"])
  assert full_ids.shape == (1, 77)  # default: the text tower's max_position_embeddings
  with pytest.raises(ValueError, match="max_position_embeddings"):
    ClipPreprocessor.from_folder(demo_folder, max_length=78)


def test_missing_preprocessor_config_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
    ClipPreprocessor.from_folder(str(tmp_path))
