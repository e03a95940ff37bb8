"""Qwen2.5-VL / Qwen2-VL hyper-parameters as frozen dataclasses, read from HF `config.json`.

Only what the forward pass needs is kept. `QwenVLConfig.from_hf_dict` reads both the
transformers 4.x flat layout and the 5.x nested one (`text_config`, `rope_parameters`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  variant: str = "qwen2_5_vl"  # "qwen2_5_vl" | "qwen2_vl"
  depth: int = 32
  width: int = 1280
  heads: int = 16
  mlp_dim: int = 3420
  out_dim: int = 3584
  patch_size: int = 14
  temporal_patch_size: int = 2
  in_channels: int = 3
  merge_size: int = 2
  window_size: int = 112
  fullatt_blocks: tuple[int, ...] = (7, 15, 23, 31)
  act: str = "silu"
  rope_theta: float = 10000.0
  eps: float = 1e-6

  @property
  def windowed(self) -> bool:
    return self.variant == "qwen2_5_vl"

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden: int = 3584
  mlp_dim: int = 18944
  layers: int = 28
  heads: int = 28
  kv_heads: int = 4
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)
  eps: float = 1e-6
  tie_embeddings: bool = False

  @property
  def head_dim(self) -> int:
    return self.hidden // self.heads


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653

  # ------------------------------------------------------------------ HF config.json
  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any]) -> "QwenVLConfig":
    """From a config.json dict (transformers 4.x flat or 5.x nested layout)."""
    mt = d.get("model_type")
    if mt not in MODEL_TYPES:
      raise ValueError(f"config.json has model_type={mt!r}; this loader reads {MODEL_TYPES}.")
    text = {k: v for k, v in d.items() if k not in ("vision_config", "text_config")}
    text.update(d.get("text_config") or {})
    if text.get("use_sliding_window"):
      raise ValueError("config.json sets use_sliding_window=true, which this model does not "
                       "implement; set it to false (the released Qwen2/2.5-VL checkpoints do).")
    rope = dict(text.get("rope_scaling") or {})
    rope.update(text.get("rope_parameters") or {})
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = tuple(int(s) for s in rope.get("mrope_section", (16, 24, 24)))
    if sum(section) != head_dim // 2:
      raise ValueError(f"config.json mrope_section {list(section)} must sum to head_dim/2 = "
                       f"{head_dim // 2}.")
    tc = TextConfig(
        vocab_size=int(text["vocab_size"]), hidden=int(text["hidden_size"]),
        mlp_dim=int(text["intermediate_size"]), layers=int(text["num_hidden_layers"]),
        heads=int(text["num_attention_heads"]),
        kv_heads=int(text.get("num_key_value_heads") or text["num_attention_heads"]),
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1000000.0))),
        mrope_section=section, eps=float(text.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(d.get("tie_word_embeddings") or text.get("tie_word_embeddings")))
    if text.get("hidden_act", "silu") != "silu":
      raise ValueError(f"config.json hidden_act={text.get('hidden_act')!r}; the decoder uses "
                       "silu.")
    v = d["vision_config"]
    common = dict(
        depth=int(v["depth"]), heads=int(v["num_heads"]), patch_size=int(v.get("patch_size", 14)),
        temporal_patch_size=int(v.get("temporal_patch_size", 2)),
        in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
        merge_size=int(v.get("spatial_merge_size", 2)),
        rope_theta=float((v.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    if mt == "qwen2_5_vl":
      vc = VisionConfig(variant=mt, width=int(v["hidden_size"]),
                        mlp_dim=int(v["intermediate_size"]), out_dim=int(v["out_hidden_size"]),
                        window_size=int(v.get("window_size", 112)),
                        fullatt_blocks=tuple(int(i) for i in v.get("fullatt_block_indexes", ())),
                        act=v.get("hidden_act", "silu"), **common)
    else:
      width = int(v["embed_dim"])
      vc = VisionConfig(variant=mt, width=width, mlp_dim=int(width * v.get("mlp_ratio", 4)),
                        out_dim=int(v["hidden_size"]), window_size=0, fullatt_blocks=(),
                        act=v.get("hidden_act", "quick_gelu"), **common)
    if vc.out_dim != tc.hidden:
      raise ValueError(f"vision output width {vc.out_dim} != text hidden_size {tc.hidden} in "
                       "config.json.")
    return cls(vision=vc, text=tc, image_token_id=int(d.get("image_token_id", 151655)),
               video_token_id=int(d.get("video_token_id", 151656)),
               vision_start_token_id=int(d.get("vision_start_token_id", 151652)),
               vision_end_token_id=int(d.get("vision_end_token_id", 151653)))
