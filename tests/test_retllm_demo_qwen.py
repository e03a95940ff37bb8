"""The demo's tiny Qwen2.5-VL folder loads in transformers (PyTorch) and in our loader alike."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.demo import tokenizers

# A tiny Qwen2.5-VL built and loaded in transformers per module: the slow tier.
pytestmark = pytest.mark.slow

CORPUS = ["a golden fox in the grass", "the amber owl seen at dusk", "my teal newt on a rock!"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("demo") / "qwen")
  return demo_qwen.build_demo_qwen(path, CORPUS, min_pixels=4 * 784, max_pixels=16 * 784, seed=3)


def test_folder_is_reused_and_complete(folder):
  assert set(demo_qwen.FILES) <= set(os.listdir(folder))
  stamp = os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns
  again = demo_qwen.build_demo_qwen(folder, CORPUS, min_pixels=4 * 784, max_pixels=16 * 784,
                                    seed=3)
  assert again == folder
  assert os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns == stamp
  with pytest.raises(ValueError, match="non-empty"):
    demo_qwen.build_demo_qwen(folder, [], min_pixels=1, max_pixels=2)


def test_tokenizer_template_and_special_tokens(folder):
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(folder)
  ids = tokenizers.qwen_special_token_ids(folder)
  msgs = [{"role": "user", "content": [
      {"type": "image"}, {"type": "text", "text": "Does the image match the caption: <a fox>?"}]}]
  text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
  assert "<|vision_start|><|image_pad|><|vision_end|>Does the image" in text
  enc = tok(text)["input_ids"]
  assert enc.count(ids["<|image_pad|>"]) == 1 and enc[0] == ids["<|im_start|>"]
  assert len(tok.encode("True", add_special_tokens=False)) == 1
  assert tok.decode(tok.encode("my teal newt on a rock!")) == "my teal newt on a rock!"
  with open(os.path.join(folder, "config.json")) as f:
    cfg = json.load(f)
  assert cfg["image_token_id"] == ids["<|image_pad|>"]
  assert cfg["text_config"]["vocab_size"] >= len(tok)


def test_weights_load_in_transformers_and_ours(folder):
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration

  from retformer_jax.convert import hf

  ref, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
      folder, dtype=torch.float32, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  model, params = hf.load_qwen2_5_vl(folder)
  emb = ref.get_input_embeddings().weight.detach().numpy()
  np.testing.assert_array_equal(np.asarray(params["embed_tokens"]), emb)
  assert model.cfg.text.vocab_size == emb.shape[0]
