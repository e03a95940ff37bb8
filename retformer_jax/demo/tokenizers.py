"""The demo models' tokenizers, trained on a small corpus and written as HuggingFace files.

CLIP: a word-level vocabulary of the corpus (class prompts and captions). Qwen: a byte-level
BPE with Qwen's special tokens, single tokens for "True" / "False", and Qwen2.5-VL's chat
template. `transformers` loads both (AutoTokenizer) without any download.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from retformer_jax import atomic_io

CLIP_PAD, CLIP_UNK, CLIP_BOS, CLIP_EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
# ids 0..3; EOS is not 2, so CLIP pools at the real EOS id
CLIP_SPECIALS = (CLIP_PAD, CLIP_UNK, CLIP_BOS, CLIP_EOS)

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                       "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Qwen2.5-VL-Instruct's chat template (images become <|vision_start|><|image_pad|><|vision_end|>).
QWEN_CHAT_TEMPLATE = (
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
QWEN_PROMPT_CORPUS = (
    "You are a helpful assistant.", "system", "user", "assistant", "True", "False",
    "Does the image match the caption: <", ">? Please directly output True or False",
    "Does the caption match the image", "Picture Video")


def write_clip_tokenizer(folder: str, corpus: Sequence[str], *, model_max_length: int) -> int:
  """Word-level tokenizer whose vocabulary is every word of `corpus`, in sorted order; writes
  tokenizer.json and tokenizer_config.json; returns the vocabulary size."""
  # `tokenizers` is imported on use: only building a demo folder needs it.
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

  norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
  pre = pre_tokenizers.Whitespace()
  words = sorted({w for text in corpus for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))})
  vocab = {t: i for i, t in enumerate(list(CLIP_SPECIALS) + [w for w in words
                                                             if w not in CLIP_SPECIALS])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=CLIP_UNK))
  tok.normalizer = norm
  tok.pre_tokenizer = pre
  tok.post_processor = processors.TemplateProcessing(
      single=f"{CLIP_BOS} $A {CLIP_EOS}",
      special_tokens=[(CLIP_BOS, vocab[CLIP_BOS]), (CLIP_EOS, vocab[CLIP_EOS])])
  os.makedirs(folder, exist_ok=True)
  atomic_io.write_text(os.path.join(folder, "tokenizer.json"), tok.to_str(pretty=True))
  atomic_io.write_json(os.path.join(folder, "tokenizer_config.json"), {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": CLIP_PAD, "unk_token": CLIP_UNK,
      "model_max_length": model_max_length,
  })
  return tok.get_vocab_size()


def write_qwen_tokenizer(folder: str, corpus: Sequence[str], *, vocab_size: int = 512) -> int:
  """Trains a byte-level BPE on corpus + prompts; writes tokenizer files; returns vocab size."""
  # `tokenizers` and `transformers` are imported on use: only building a demo folder needs them.
  from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                          pre_tokenizers, trainers)
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
  texts = list(corpus) + list(QWEN_PROMPT_CORPUS) * 50
  tok.train_from_iterator(texts, trainer=trainer)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t in QWEN_SPECIAL_TOKENS])
  os.makedirs(folder, exist_ok=True)
  atomic_io.write_text(os.path.join(folder, "tokenizer.json"), tok.to_str())
  atomic_io.write_json(os.path.join(folder, "tokenizer_config.json"), {
      "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768,
      "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
      "bos_token": None, "errors": "replace", "add_prefix_space": False,
      "clean_up_tokenization_spaces": False, "split_special_tokens": False,
      "chat_template": QWEN_CHAT_TEMPLATE}, indent=2)
  atomic_io.write_text(os.path.join(folder, "chat_template.jinja"), QWEN_CHAT_TEMPLATE)
  for word in ("True", "False"):
    ids = tok.encode(word, add_special_tokens=False).ids
    if len(ids) != 1:
      raise RuntimeError(f"tiny tokenizer splits {word!r} into {len(ids)} tokens; "
                         "raise vocab_size.")
  return tok.get_vocab_size()


def qwen_special_token_ids(folder: str) -> dict[str, int]:
  """Ids of the special tokens (for config.json: image_token_id, vision_start_token_id, ...)."""
  with open(os.path.join(folder, "tokenizer.json")) as f:
    added = {t["content"]: t["id"] for t in json.load(f)["added_tokens"]}
  return {t: added[t] for t in QWEN_SPECIAL_TOKENS}
