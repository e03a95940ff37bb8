"""CLIP hyper-parameters as a frozen dataclass, read from / written to HuggingFace `config.json`.

Only what the forward pass needs is kept. `from_hf_dict` accepts both CLIPModel configs saved by
transformers and the OpenCLIP checkpoints republished in HF format (laion/*, DataComp); missing
keys take transformers' CLIPConfig defaults.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from retformer_jax import errors
from retformer_jax.models.layers import ACTIVATIONS

DTYPES = ("float32", "bfloat16", "float16")


class ClipConfigError(errors.UserError, ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One transformer tower (the vision ViT or the causal text encoder)."""

  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def validate(self, what: str) -> None:
    if self.hidden_size % self.num_heads:
      raise ClipConfigError(f"{what}: hidden_size {self.hidden_size} is not a multiple of "
                            f"num_attention_heads {self.num_heads}.")
    if self.hidden_act not in ACTIVATIONS:
      raise ClipConfigError(f"{what}: hidden_act {self.hidden_act!r} is not supported; "
                            f"use one of {', '.join(ACTIVATIONS)}.")


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerConfig):
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid ** 2 + 1


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerConfig):
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  eos_token_id: int = 49407
  bos_token_id: int = 49406
  pad_token_id: int = 1


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Both towers, the shared projection width, and how to run them.

  `dtype` is the compute dtype ("bfloat16" on accelerators), `param_dtype` the storage dtype;
  `scan_layers` stacks the blocks of each tower under `nn.scan` (one compiled block: fast
  compiles for deep towers; parameters get a leading `layers` axis).
  """

  vision: VisionConfig
  text: TextConfig
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True

  def __post_init__(self):
    self.vision.validate("vision_config")
    self.text.validate("text_config")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ClipConfigError(f"ClipConfig.{name}={getattr(self, name)!r}; use one of {DTYPES}.")
    if self.vision.image_size % self.vision.patch_size:
      raise ClipConfigError(f"vision_config: image_size {self.vision.image_size} is not a "
                            f"multiple of patch_size {self.vision.patch_size}.")

  # ------------------------------------------------------------------ HF config.json
  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> "ClipConfig":
    model_type = d.get("model_type", "clip")
    if model_type != "clip":
      raise ClipConfigError(f"config.json has model_type {model_type!r}; load_clip reads CLIP "
                            "folders (model_type 'clip', architectures CLIPModel).")
    text = dict(d.get("text_config") or {})
    text.update(d.get("text_config_dict") or {})  # legacy configs: the *_dict entries win
    vision = dict(d.get("vision_config") or {})
    vision.update(d.get("vision_config_dict") or {})
    eos = text.get("eos_token_id", 49407)
    if isinstance(eos, (list, tuple)):
      if len(eos) != 1:
        raise ClipConfigError(f"text_config.eos_token_id={eos}: CLIP pools at one EOS id.")
      eos = eos[0]
    return cls(
        vision=VisionConfig(
            hidden_size=int(vision.get("hidden_size", 768)),
            intermediate_size=int(vision.get("intermediate_size", 3072)),
            num_layers=int(vision.get("num_hidden_layers", 12)),
            num_heads=int(vision.get("num_attention_heads", 12)),
            hidden_act=str(vision.get("hidden_act", "quick_gelu")),
            layer_norm_eps=float(vision.get("layer_norm_eps", 1e-5)),
            image_size=_square(vision.get("image_size", 224), "vision_config.image_size"),
            patch_size=_square(vision.get("patch_size", 32), "vision_config.patch_size"),
            num_channels=int(vision.get("num_channels", 3))),
        text=TextConfig(
            hidden_size=int(text.get("hidden_size", 512)),
            intermediate_size=int(text.get("intermediate_size", 2048)),
            num_layers=int(text.get("num_hidden_layers", 12)),
            num_heads=int(text.get("num_attention_heads", 8)),
            hidden_act=str(text.get("hidden_act", "quick_gelu")),
            layer_norm_eps=float(text.get("layer_norm_eps") or 1e-5),
            vocab_size=int(text.get("vocab_size", 49408)),
            max_position_embeddings=int(text.get("max_position_embeddings", 77)),
            eos_token_id=int(eos),
            bos_token_id=int(_or(text.get("bos_token_id"), 49406)),
            pad_token_id=int(_or(text.get("pad_token_id"), 1))),
        projection_dim=int(d.get("projection_dim") or 512),
        logit_scale_init_value=float(_or(d.get("logit_scale_init_value"), 2.6592)),
        **overrides)

  @classmethod
  def from_json_file(cls, path: str, **overrides) -> "ClipConfig":
    try:
      with open(path) as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(
          f"{path} is missing: a CLIP folder needs the config.json saved with the weights "
          "(transformers `save_pretrained` writes it).") from None
    except ValueError as e:
      raise ClipConfigError(f"{path} is not valid JSON ({e}).") from e
    return cls.from_hf_dict(d, **overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    """A config.json that transformers' CLIPModel loads."""
    def tower(t: TowerConfig) -> dict[str, Any]:
      return {"hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
              "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
              "hidden_act": t.hidden_act, "layer_norm_eps": t.layer_norm_eps,
              "projection_dim": self.projection_dim}

    v, t = self.vision, self.text
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": self.projection_dim,
        "logit_scale_init_value": self.logit_scale_init_value,
        "initializer_factor": 1.0,
        "dtype": self.param_dtype,
        "vision_config": {**tower(v), "model_type": "clip_vision_model",
                          "image_size": v.image_size, "patch_size": v.patch_size,
                          "num_channels": v.num_channels},
        "text_config": {**tower(t), "model_type": "clip_text_model",
                        "vocab_size": t.vocab_size,
                        "max_position_embeddings": t.max_position_embeddings,
                        "eos_token_id": t.eos_token_id, "bos_token_id": t.bos_token_id,
                        "pad_token_id": t.pad_token_id},
    }


def _or(value, default):
  return default if value is None else value


def _square(value, what: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ClipConfigError(f"{what}={value}: only square sizes are supported (as in HF CLIP).")
    value = value[0]
  return int(value)
