"""One-off converter: an original Long-CLIP checkpoint -> a HuggingFace CLIP folder.

    python -m retformer_jax.convert.longclip --checkpoint longclip-L.pt --out DIR \
        [--tokenizer DIR_OF_openai/clip-vit-large-patch14]

Long-CLIP (beichenzbc/Long-CLIP) keeps OpenAI CLIP's state-dict layout with a 248-position text
tower whose position embedding is two tables: in model/model_longclip.py, `encode_text` adds
    positional_embedding * mask1 + positional_embedding_res * mask2,
mask1 = 1 on positions 0..19 and mask2 = 1 on positions 20..247. That sum is one table (rows
0..19 from `positional_embedding`, the rest from `positional_embedding_res`): it becomes the
HF `text_model.embeddings.position_embedding.weight`, and the folder loads through
`hf.load_clip` (or transformers' CLIPModel) with max_position_embeddings = 248.

Reading the checkpoint needs torch (installed with the `prep` or `test` extra),
and only ever through `torch.load(..., weights_only=True)`, which unpickles tensors and plain
containers and nothing else. A TorchScript archive, or a file that needs full unpickling, is
refused with one line: neither is read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import zipfile

import numpy as np

from retformer_jax import atomic_io, errors
from retformer_jax.convert import safetensors_io
from retformer_jax.models.clip_config import ClipConfig, TextConfig, VisionConfig

# model_longclip.py: mask1[:20] = 1, mask2[20:] = 1.
KEPT_POSITIONS = 20
# Entries some OpenAI-layout checkpoints carry that are not weights.
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json")
# OpenAI CLIP normalisation and Long-CLIP's preprocessing (bicubic resize, centre crop).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class LongClipError(errors.UserError, ValueError):
  pass


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors as float32 NumPy arrays, read with a weights-only loader."""
  if not os.path.isfile(path):
    raise LongClipError(f"Long-CLIP checkpoint {path!r} not found; download longclip-L.pt "
                        "(or -B) from the Long-CLIP release and pass --checkpoint.")
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      if any(re.search(r"(^|/)(code/|constants\.pkl$)", n) for n in z.namelist()):
        raise LongClipError(f"{path} is a TorchScript archive (torch.jit.save), which runs code "
                            "when loaded; refusing. Give the state-dict checkpoint "
                            "(longclip-L.pt of the Long-CLIP release).")
  try:
    import torch
  except ImportError:
    raise LongClipError("Converting a Long-CLIP .pt needs torch to read it: pip install torch "
                        "(the CPU build is enough), or install the `prep` extra.") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises several types for a refused pickle
    raise LongClipError(f"{path} cannot be read with torch.load(weights_only=True) (it needs "
                        f"full unpickling, which may run code; refusing): "
                        f"{errors.one_line(e)[:200]}") from None
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise LongClipError(f"{path} holds a {type(state).__name__}, not a state dict.")
  out = {}
  for name, value in state.items():
    name = name[len("module."):] if name.startswith("module.") else name
    if name in NOT_WEIGHTS:
      continue
    if not isinstance(value, torch.Tensor):
      raise LongClipError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor.")
    out[name] = value.detach().to(torch.float32).numpy()
  return out


def text_positions(state: dict[str, np.ndarray]) -> np.ndarray:
  """The one position table of Long-CLIP's encode_text (pos * mask1 + pos_res * mask2)."""
  pos = state["positional_embedding"]
  res = state.get("positional_embedding_res")
  if res is None:
    return pos
  if res.shape != pos.shape:
    raise LongClipError(f"positional_embedding {pos.shape} and positional_embedding_res "
                        f"{res.shape} differ in shape.")
  mask1 = np.zeros((pos.shape[0], 1), np.float32)
  mask1[:KEPT_POSITIONS] = 1
  mask2 = 1 - mask1
  return pos * mask1 + res * mask2


def _layers(state, prefix: str) -> int:
  found = {int(m[1]) for k in state for m in [re.match(prefix + r"(\d+)\.", k)] if m}
  if found != set(range(len(found))):
    raise LongClipError(f"transformer blocks {sorted(found)} under {prefix!r} are not 0..N-1.")
  return len(found)


def config_from_state(state, *, text_heads: int = 0, vision_heads: int = 0) -> ClipConfig:
  """Hyper-parameters as Long-CLIP's build_model derives them (heads = width // 64)."""
  if "visual.proj" not in state:
    raise LongClipError("The checkpoint has no visual.proj: only ViT Long-CLIP checkpoints "
                        "are supported (not ResNet image towers).")
  vw = state["visual.conv1.weight"].shape[0]
  patch = state["visual.conv1.weight"].shape[-1]
  grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
  tw = state["ln_final.weight"].shape[0]
  vocab = state["token_embedding.weight"].shape[0]
  tower = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5)
  return ClipConfig(
      vision=VisionConfig(hidden_size=vw, intermediate_size=4 * vw,
                          num_layers=_layers(state, r"visual\.transformer\.resblocks\."),
                          num_heads=vision_heads or vw // 64, image_size=patch * grid,
                          patch_size=patch, **tower),
      # The end-of-text token is the vocabulary's highest id (OpenAI BPE: 49407), where
      # encode_text pools (argmax of the ids); pooling at its first occurrence is the same.
      text=TextConfig(hidden_size=tw, intermediate_size=4 * tw,
                      num_layers=_layers(state, r"transformer\.resblocks\."),
                      num_heads=text_heads or tw // 64, vocab_size=vocab,
                      max_position_embeddings=state["positional_embedding"].shape[0],
                      eos_token_id=vocab - 1, bos_token_id=vocab - 2, pad_token_id=vocab - 1,
                      **tower),
      projection_dim=state["text_projection"].shape[1])


def _block(src: str, dst: str, state, out: dict, used: set) -> None:
  def take(name):
    used.add(f"{src}.{name}")
    return state[f"{src}.{name}"]

  w = take("attn.in_proj_weight")
  b = take("attn.in_proj_bias")
  for part, w_i, b_i in zip("qkv", np.split(w, 3, axis=0), np.split(b, 3, axis=0)):
    out[f"{dst}.self_attn.{part}_proj.weight"] = w_i
    out[f"{dst}.self_attn.{part}_proj.bias"] = b_i
  for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                       ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                       ("mlp.fc2", "mlp.c_proj")):
    out[f"{dst}.{ours}.weight"] = take(f"{theirs}.weight")
    out[f"{dst}.{ours}.bias"] = take(f"{theirs}.bias")


def hf_tensors(state: dict[str, np.ndarray], config: ClipConfig) -> dict[str, np.ndarray]:
  """OpenAI / Long-CLIP names -> HF CLIPModel names; every checkpoint tensor must be used."""
  direct = {
      "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
      "text_model.final_layer_norm.weight": "ln_final.weight",
      "text_model.final_layer_norm.bias": "ln_final.bias",
      "vision_model.embeddings.class_embedding": "visual.class_embedding",
      "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
      "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
      "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
      "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
      "vision_model.post_layernorm.weight": "visual.ln_post.weight",
      "vision_model.post_layernorm.bias": "visual.ln_post.bias",
      "logit_scale": "logit_scale",
  }
  missing = [k for k in list(direct.values()) + ["positional_embedding", "text_projection",
                                                 "visual.proj"] if k not in state]
  if missing:
    raise LongClipError(f"The checkpoint lacks {missing[0]!r}: not an OpenAI-layout CLIP / "
                        "Long-CLIP state dict.")
  out = {ours: state[theirs] for ours, theirs in direct.items()}
  used = set(direct.values()) | {"positional_embedding", "positional_embedding_res",
                                 "text_projection", "visual.proj"}
  out["text_model.embeddings.position_embedding.weight"] = text_positions(state)
  out["text_projection.weight"] = state["text_projection"].T
  out["visual_projection.weight"] = state["visual.proj"].T
  try:
    for i in range(config.text.num_layers):
      _block(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", state, out, used)
    for i in range(config.vision.num_layers):
      _block(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", state,
             out, used)
  except KeyError as e:
    raise LongClipError(f"The checkpoint lacks {e.args[0]!r}.") from None
  unused = sorted(set(state) - used)
  if unused:
    raise LongClipError(f"{len(unused)} checkpoint tensors have no HF CLIP counterpart, e.g. "
                        f"{unused[:3]}; is this a Long-CLIP / OpenAI CLIP ViT state dict?")
  return {k: np.asarray(v, np.float32, order="C") for k, v in out.items()}  # keeps 0-d


def _preprocessor(image_size: int) -> dict:
  return {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
          "size": {"shortest_edge": image_size}, "resample": 3, "do_center_crop": True,
          "crop_size": {"height": image_size, "width": image_size}, "do_rescale": True,
          "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN),
          "image_std": list(STD), "do_convert_rgb": True}


def _copy_tokenizer(src: str, dst: str, max_length: int) -> None:
  present = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(src, f))]
  if "tokenizer_config.json" not in present:
    raise LongClipError(f"--tokenizer {src!r} has no tokenizer_config.json; give the folder of "
                        "openai/clip-vit-large-patch14 (or any CLIP tokenizer folder).")
  for name in present:
    if name == "tokenizer_config.json":
      with open(os.path.join(src, name)) as f:
        cfg = json.load(f)
      cfg["model_max_length"] = max_length
      atomic_io.write_json(os.path.join(dst, name), cfg, indent=2)
    else:
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def convert(checkpoint: str, out: str, *, tokenizer: str = "", text_heads: int = 0,
            vision_heads: int = 0) -> str:
  """Writes config.json, model.safetensors, preprocessor_config.json (+ tokenizer) to `out`."""
  if os.path.isdir(out) and os.listdir(out):
    raise LongClipError(f"--out {out!r} exists and is not empty; give a new folder.")
  state = read_checkpoint(checkpoint)
  config = config_from_state(state, text_heads=text_heads, vision_heads=vision_heads)
  tensors = hf_tensors(state, config)

  def write(tmp: str) -> None:
    safetensors_io.save_file(tensors, os.path.join(tmp, "model.safetensors"),
                             metadata={"format": "pt"})
    atomic_io.write_json(os.path.join(tmp, "config.json"), config.to_hf_dict(), indent=2)
    atomic_io.write_json(os.path.join(tmp, "preprocessor_config.json"),
                         _preprocessor(config.vision.image_size), indent=2)
    if tokenizer:
      _copy_tokenizer(tokenizer, tmp, config.text.max_position_embeddings)

  return atomic_io.build_folder(out, lambda f: False, write)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m retformer_jax.convert.longclip",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="longclip-L.pt / longclip-B.pt")
  parser.add_argument("--out", required=True, help="new folder for the HF CLIP files")
  parser.add_argument("--tokenizer", default="", help="a CLIP tokenizer folder to copy")
  args = parser.parse_args(argv)
  try:
    folder = convert(args.checkpoint, args.out, tokenizer=args.tokenizer)
  except errors.UserError as e:
    print(f"error: {errors.one_line(e)}", file=sys.stderr)
    return errors.EXIT_USAGE
  print(f"wrote {folder} (config.json, model.safetensors, preprocessor_config.json)")
  if not args.tokenizer:
    print("No --tokenizer: copy vocab.json, merges.txt, tokenizer.json, tokenizer_config.json "
          "and special_tokens_map.json of openai/clip-vit-large-patch14 into it and set "
          "model_max_length in tokenizer_config.json to the text positions (Long-CLIP: 248).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
