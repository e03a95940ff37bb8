"""Qwen image preprocessing vs transformers' Qwen2VLImageProcessorPil, and the scoring prompt."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from retformer_jax.data import qwen_preprocess
from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.demo import tokenizers

LO, HI = 16 * 28 * 28, 48 * 28 * 28


@pytest.mark.parametrize("hw", [(100, 150), (60, 40), (400, 300), (28, 28 * 5)])
def test_pixels_match_transformers(hw):
  """pre_resize=False: the HF processor alone."""
  rng = np.random.default_rng(hw[0])
  image = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
  ref = Qwen2VLImageProcessorPil(min_pixels=LO, max_pixels=HI)(images=[Image.fromarray(image)],
                                                               return_tensors="np")
  ours, grid = qwen_preprocess.QwenImageProcessor(min_pixels=LO, max_pixels=HI,
                                                  pre_resize=False)(image)
  np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
  assert ours.shape == ref["pixel_values"].shape
  np.testing.assert_allclose(ours, ref["pixel_values"], atol=1e-6, rtol=0)
  h, w = grid[1] * 14, grid[2] * 14
  assert LO <= h * w <= HI and h % 28 == 0 and w % 28 == 0


def test_rgba_and_grey_inputs_match_transformers():
  rng = np.random.default_rng(3)
  rgba = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
  grey = rng.integers(0, 256, (90, 70), dtype=np.uint8)
  proc = qwen_preprocess.QwenImageProcessor(min_pixels=LO, max_pixels=HI, pre_resize=False)
  ref_proc = Qwen2VLImageProcessorPil(min_pixels=LO, max_pixels=HI)
  for arr, mode in ((rgba, "RGBA"), (grey, "L")):
    ref = ref_proc(images=[Image.fromarray(arr, mode)], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(proc(arr)[0], ref, atol=1e-6, rtol=0)


def test_from_folder_reads_config_and_overrides(tmp_path):
  demo_qwen.write_image_processor(str(tmp_path), min_pixels=LO, max_pixels=HI)
  proc = qwen_preprocess.QwenImageProcessor.from_folder(str(tmp_path))
  assert (proc.min_pixels, proc.max_pixels, proc.patch_size, proc.merge_size) == (LO, HI, 14, 2)
  proc = qwen_preprocess.QwenImageProcessor.from_folder(str(tmp_path), max_pixels=2 * HI)
  assert proc.max_pixels == 2 * HI


def test_bad_inputs_are_clear_errors():
  with pytest.raises(ValueError, match="min_pixels"):
    qwen_preprocess.QwenImageProcessor(min_pixels=10, max_pixels=5)
  with pytest.raises(ValueError, match="uint8"):
    qwen_preprocess.QwenImageProcessor()(np.zeros((30, 30, 3), np.float32))


def test_prompt_ids_match_processor_expansion(tmp_path):
  """Ids equal the chat template's text with <|image_pad|> expanded, as the HF processor does."""
  from transformers import AutoTokenizer

  tokenizers.write_qwen_tokenizer(str(tmp_path), ["a dog runs on the grass"])
  tok = AutoTokenizer.from_pretrained(str(tmp_path))
  pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
  prompter = qwen_preprocess.QwenPrompter(tok, pad_id)
  ids = prompter.pair_ids("a dog runs", num_image_tokens=6)
  text = prompter.text("a dog runs")
  assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                         "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Does the "
                         "image match the caption: <a dog runs>? Please directly output True or "
                         "False<|im_end|>\n<|im_start|>assistant\n")
  expected = tok(text.replace("<|image_pad|>", "<|image_pad|>" * 6),
                 add_special_tokens=False)["input_ids"]
  assert ids.tolist() == list(expected)
  assert prompter.true_id == tok.convert_tokens_to_ids("True")


@pytest.mark.parametrize("hw,staged_hw", [((300, 400), (308, 392)), ((10, 400), (28, 392))])
def test_pre_resize_repeats_the_reference_loader(hw, staged_hw):
  """Default: first qwen_vl_utils' bicubic resize to multiples of 28, then the processor. A thin
  image gets qwen_vl_utils' size (28, 392), not the processor's rule (28, 364)."""
  rng = np.random.default_rng(7)
  image = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
  assert qwen_preprocess.fetch_image_size(*hw) == staged_hw
  h, w = staged_hw
  staged = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))
  ref = Qwen2VLImageProcessorPil(min_pixels=LO, max_pixels=HI)(
      images=[Image.fromarray(staged)], return_tensors="np")["pixel_values"]
  ours, _ = qwen_preprocess.QwenImageProcessor(min_pixels=LO, max_pixels=HI)(image)
  np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
  plain, _ = qwen_preprocess.QwenImageProcessor(min_pixels=LO, max_pixels=HI,
                                                pre_resize=False)(image)
  assert plain.shape != ours.shape or np.abs(plain - ours).max() > 1e-3


def test_processor_chat_template_file_is_preferred(tmp_path):
  """A folder's chat_template.json (the processor's) overrides a text-only tokenizer template."""
  import json

  from transformers import AutoTokenizer

  tokenizers.write_qwen_tokenizer(str(tmp_path), ["a cat"])
  tok = AutoTokenizer.from_pretrained(str(tmp_path))
  tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # text only
  pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
  with pytest.raises(ValueError, match="image placeholders"):
    qwen_preprocess.QwenPrompter(tok, pad_id).pair_ids("a cat", 4)
  (tmp_path / "chat_template.json").write_text(
      json.dumps({"chat_template": tokenizers.QWEN_CHAT_TEMPLATE}))
  template = qwen_preprocess.QwenPrompter.folder_chat_template(str(tmp_path))
  ids = qwen_preprocess.QwenPrompter(tok, pad_id, chat_template=template).pair_ids("a cat", 4)
  assert (ids == pad_id).sum() == 4
