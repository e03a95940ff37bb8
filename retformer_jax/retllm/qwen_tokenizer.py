"""A tiny Qwen2-style tokenizer and image-processor config, written as HuggingFace files.

The demo and the tests need a Qwen2.5-VL folder that `transformers` can load (AutoTokenizer,
AutoProcessor) without any download: a byte-level BPE trained on a small corpus, with Qwen's
special tokens, single tokens for "True" / "False", and Qwen2.5-VL's chat template.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from retformer_jax import atomic_io

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Qwen2.5-VL-Instruct's chat template (images become <|vision_start|><|image_pad|><|vision_end|>).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Text the scoring prompts are made of, so that the tiny vocabulary covers them well.
PROMPT_CORPUS = (
    "You are a helpful assistant.", "system", "user", "assistant", "True", "False",
    "Does the image match the caption: <", ">? Please directly output True or False",
    "Does the caption match the image", "Picture Video")


def write_tokenizer(folder: str, corpus: Sequence[str], *, vocab_size: int = 512) -> int:
  """Trains a byte-level BPE on corpus + prompts; writes tokenizer files; returns vocab size."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

  from transformers.models.qwen2 import tokenization_qwen2

  tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(tokenization_qwen2.PRETOKENIZE_REGEX), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  # "True" / "False" repeated so that each ends up a single token.
  texts = list(corpus) + list(PROMPT_CORPUS) * 50
  tok.train_from_iterator(texts, trainer=trainer)
  from tokenizers import AddedToken

  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  os.makedirs(folder, exist_ok=True)
  atomic_io.write_text(os.path.join(folder, "tokenizer.json"), tok.to_str())
  atomic_io.write_json(os.path.join(folder, "tokenizer_config.json"), {
      "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768,
      "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
      "bos_token": None, "errors": "replace", "add_prefix_space": False,
      "clean_up_tokenization_spaces": False, "split_special_tokens": False,
      "chat_template": CHAT_TEMPLATE}, indent=2)
  atomic_io.write_text(os.path.join(folder, "chat_template.jinja"), CHAT_TEMPLATE)
  for word in ("True", "False"):
    ids = tok.encode(word, add_special_tokens=False).ids
    if len(ids) != 1:
      raise RuntimeError(f"tiny tokenizer splits {word!r} into {len(ids)} tokens; "
                         "raise vocab_size.")
  return tok.get_vocab_size()


def special_token_ids(folder: str) -> dict[str, int]:
  """Ids of the special tokens (for config.json: image_token_id, vision_start_token_id, ...)."""
  with open(os.path.join(folder, "tokenizer.json")) as f:
    added = {t["content"]: t["id"] for t in json.load(f)["added_tokens"]}
  return {t: added[t] for t in SPECIAL_TOKENS}


def write_image_processor(folder: str, *, min_pixels: int, max_pixels: int,
                          patch_size: int = 14, merge_size: int = 2,
                          temporal_patch_size: int = 2) -> None:
  """preprocessor_config.json of a Qwen2.5-VL image processor (CLIP mean / std)."""
  atomic_io.write_json(os.path.join(folder, "preprocessor_config.json"), {
      "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
      "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
      "do_convert_rgb": True, "resample": 3,
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "min_pixels": int(min_pixels), "max_pixels": int(max_pixels),
      "size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)},
      "patch_size": patch_size, "temporal_patch_size": temporal_patch_size,
      "merge_size": merge_size}, indent=2)
