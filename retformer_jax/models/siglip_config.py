"""SigLIP hyper-parameters as a frozen dataclass, read from HuggingFace `config.json`.

Covers transformers' `SiglipModel` folders (model_type "siglip"): SigLIP and the fixed-resolution
SigLIP 2 checkpoints (e.g. google/siglip2-base-patch16-224, which HF also files as "siglip").
The NaFlex SigLIP 2 (model_type "siglip2", variable patch grids) is another architecture and is
refused. Missing keys take transformers' SiglipConfig defaults.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from retformer_jax.models.clip_config import DTYPES, ClipConfigError, TowerConfig


class SiglipConfigError(ClipConfigError):
  pass


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(TowerConfig):
  """The ViT: patch grid with learned positions (no class token), MAP pooling head."""

  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3

  @property
  def grid(self) -> int:
    """Patches per side; a remainder of pixels (384 px with 14 px patches) is not seen, as in
    the torch convolution with padding "valid"."""
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid ** 2


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig(TowerConfig):
  """The bidirectional text encoder; `projection_size` is the width of its linear head."""

  vocab_size: int = 32000
  max_position_embeddings: int = 64
  projection_size: int = 768


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """Both towers and how to run them (`dtype`, `param_dtype`, `scan_layers` as in ClipConfig)."""

  vision: SiglipVisionConfig
  text: SiglipTextConfig
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True

  def __post_init__(self):
    self.vision.validate("vision_config")
    self.text.validate("text_config")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise SiglipConfigError(f"SiglipConfig.{name}={getattr(self, name)!r}; use one of "
                                f"{DTYPES}.")
    if self.text.projection_size != self.vision.hidden_size:
      raise SiglipConfigError(
          f"text_config.projection_size {self.text.projection_size} differs from "
          f"vision_config.hidden_size {self.vision.hidden_size}: image and text features "
          "would not share one space.")

  @property
  def embed_dim(self) -> int:
    """Width of the image and text features."""
    return self.vision.hidden_size

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> "SiglipConfig":
    model_type = d.get("model_type", "siglip")
    if model_type == "siglip2":
      raise SiglipConfigError(
          "config.json has model_type 'siglip2' (NaFlex SigLIP 2, variable patch grids), which "
          "is not supported; use a fixed-resolution SigLIP 2 folder (model_type 'siglip', e.g. "
          "google/siglip2-base-patch16-224) or a SigLIP one.")
    if model_type != "siglip":
      raise SiglipConfigError(f"config.json has model_type {model_type!r}; load_siglip reads "
                              "SigLIP folders (model_type 'siglip', architectures SiglipModel).")
    vision = dict(d.get("vision_config") or {})
    text = dict(d.get("text_config") or {})
    if vision.get("vision_use_head", True) is False:
      raise SiglipConfigError(
          "config.json: vision_config.vision_use_head is false, so the model has no pooled image "
          "features; use a SiglipModel folder with its attention-pooling head.")
    v_hidden = int(vision.get("hidden_size", 768))
    t_hidden = int(text.get("hidden_size", 768))
    return cls(
        vision=SiglipVisionConfig(
            hidden_size=v_hidden,
            intermediate_size=int(vision.get("intermediate_size", 3072)),
            num_layers=int(vision.get("num_hidden_layers", 12)),
            num_heads=int(vision.get("num_attention_heads", 12)),
            hidden_act=str(vision.get("hidden_act", "gelu_pytorch_tanh")),
            layer_norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
            image_size=_square(vision.get("image_size", 224), "vision_config.image_size"),
            patch_size=_square(vision.get("patch_size", 16), "vision_config.patch_size"),
            num_channels=int(vision.get("num_channels", 3))),
        text=SiglipTextConfig(
            hidden_size=t_hidden,
            intermediate_size=int(text.get("intermediate_size", 3072)),
            num_layers=int(text.get("num_hidden_layers", 12)),
            num_heads=int(text.get("num_attention_heads", 12)),
            hidden_act=str(text.get("hidden_act", "gelu_pytorch_tanh")),
            layer_norm_eps=float(text.get("layer_norm_eps", 1e-6)),
            vocab_size=int(text.get("vocab_size", 32000)),
            max_position_embeddings=int(text.get("max_position_embeddings", 64)),
            projection_size=int(text.get("projection_size") or t_hidden)),
        **overrides)

  @classmethod
  def from_json_file(cls, path: str, **overrides) -> "SiglipConfig":
    try:
      with open(path) as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(
          f"{path} is missing: a SigLIP folder needs the config.json saved with the weights "
          "(transformers `save_pretrained` writes it).") from None
    except ValueError as e:
      raise SiglipConfigError(f"{path} is not valid JSON ({e}).") from e
    return cls.from_hf_dict(d, **overrides)


def _square(value, what: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise SiglipConfigError(f"{what}={value}: only square sizes are supported.")
    value = value[0]
  return int(value)
