"""A tiny random Qwen2.5-VL written as a complete HuggingFace folder, without torch.

The RetLLM demo (`retllm.model_path == ""`) builds it once in the workdir and loads it through
the same path as real checkpoints (`hf.load_qwen2_5_vl`, AutoTokenizer, the image processor
config): our Flax init, exported to hub tensor names, plus a tiny BPE tokenizer trained on the
demo captions. Its scores are random; it exists to run the pipeline end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import flax.linen as nn
import jax

from retformer_jax import atomic_io
from retformer_jax.convert import qwen_import, safetensors_io
from retformer_jax.demo import tokenizers
from retformer_jax.models import qwen2_5_vl
from retformer_jax.models.qwen_config import QwenVLConfig

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "preprocessor_config.json", "demo_qwen.json")


def hf_config(vocab_size: int, special_ids: dict[str, int], *, hidden: int = 64,
              layers: int = 4, heads: int = 4, kv_heads: int = 2, vision_width: int = 32,
              vision_depth: int = 2) -> dict:
  """config.json of a small Qwen2.5-VL (transformers' nested layout)."""
  # `transformers` is imported on use: only building the demo folder needs it.
  from transformers import Qwen2_5_VLConfig

  head_dim = hidden // heads
  quarter = head_dim // 8
  section = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]
  text = dict(
      vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
      rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False,
      use_sliding_window=False,
      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
      bos_token_id=special_ids["<|endoftext|>"], eos_token_id=special_ids["<|im_end|>"],
      pad_token_id=special_ids["<|endoftext|>"])
  vision = dict(
      depth=vision_depth, hidden_size=vision_width, intermediate_size=2 * vision_width,
      num_heads=2, out_hidden_size=hidden, patch_size=14, spatial_merge_size=2,
      temporal_patch_size=2, window_size=56, fullatt_block_indexes=[vision_depth - 1],
      hidden_act="silu", in_channels=3)
  cfg = Qwen2_5_VLConfig(
      text_config=text, vision_config=vision,
      image_token_id=special_ids["<|image_pad|>"], video_token_id=special_ids["<|video_pad|>"],
      vision_start_token_id=special_ids["<|vision_start|>"],
      vision_end_token_id=special_ids["<|vision_end|>"], tie_word_embeddings=False)
  d = cfg.to_dict()
  d["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
  return d


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


def _spec(corpus, min_pixels, max_pixels, seed) -> dict:
  digest = hashlib.sha256("\n".join(corpus).encode()).hexdigest()
  return {"corpus_sha256": digest, "min_pixels": int(min_pixels), "max_pixels": int(max_pixels),
          "seed": int(seed), "version": 1}


def _is_complete(folder: str, spec: dict) -> bool:
  if not all(os.path.exists(os.path.join(folder, f)) for f in FILES):
    return False
  with open(os.path.join(folder, "demo_qwen.json")) as f:
    return json.load(f) == spec


def _write(folder: str, corpus: Sequence[str], min_pixels: int, max_pixels: int, seed: int,
           spec: dict) -> None:
  vocab = tokenizers.write_qwen_tokenizer(folder, corpus)
  write_image_processor(folder, min_pixels=min_pixels, max_pixels=max_pixels)
  config = hf_config(vocab, tokenizers.qwen_special_token_ids(folder))
  model = qwen2_5_vl.build(QwenVLConfig.from_hf_dict(config), "float32")
  params = jax.jit(lambda rng: nn.unbox(
      model.init(rng, method=qwen2_5_vl.QwenVL.init_params)["params"]))(jax.random.PRNGKey(seed))
  tensors = dict(qwen_import.export_qwen2_5_vl(params))
  # The hub checkpoints store the patch embedding as a Conv3d kernel [out, C, T, P, P].
  v = config["vision_config"]
  name = "visual.patch_embed.proj.weight"
  tensors[name] = tensors[name].reshape(
      v["hidden_size"], v["in_channels"], v["temporal_patch_size"], v["patch_size"],
      v["patch_size"])
  safetensors_io.save_file(tensors, os.path.join(folder, "model.safetensors"),
                           metadata={"format": "pt"})
  atomic_io.write_json(os.path.join(folder, "config.json"), config)
  atomic_io.write_json(os.path.join(folder, "demo_qwen.json"), spec)


def build_demo_qwen(folder: str, corpus: Sequence[str], *, min_pixels: int, max_pixels: int,
                    seed: int = 0) -> str:
  """Writes (or reuses) the tiny random Qwen2.5-VL folder at `folder`; returns its path.

  Deterministic in its inputs; built in a temporary directory and moved into place, so a crash
  never leaves a half-written folder, and a complete folder with the same inputs is reused.
  """
  if not corpus:
    raise ValueError("build_demo_qwen needs a non-empty text corpus for its tokenizer.")
  spec = _spec(list(corpus), min_pixels, max_pixels, seed)
  return atomic_io.build_folder(
      folder, lambda f: _is_complete(f, spec),
      lambda tmp: _write(tmp, list(corpus), min_pixels, max_pixels, seed, spec))
