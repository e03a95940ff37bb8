"""Checks that run before any stage: a config that would give a wrong number stops here.

The embedded demo models (config.clip.path == "", config.retllm.model_path == "") have random
weights. They make the demo self-contained; on real data they would train and report numbers
that mean nothing, so there an empty path is an error that shows how to get real weights.
"""

from __future__ import annotations

from retformer_jax import errors
from retformer_jax.kb import source_spec

CLIP_DOWNLOAD = ("huggingface-cli download laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K "
                 "--local-dir ~/clip-b16-datacomp")
QWEN_DOWNLOAD = ("huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct "
                 "--local-dir ~/qwen2.5-vl-7b")

RETFORMER_STAGES = ("zeroshot", "embed", "index", "neighbors", "train", "eval")


def check(config, names) -> None:
  """Raises errors.ConfigError when a stage in `names` would use a demo model on real data,
  and the KB's SourceSpecError for a malformed config.kb.sources entry."""
  if any(n in ("embed", "index", "neighbors", "train", "eval") for n in names):
    source_spec.kb_sources(config)
  if any(n in RETFORMER_STAGES for n in names) and config.data.name != "demo" \
      and not config.clip.path:
    raise errors.ConfigError(
        f"config.clip.path is empty, which selects the random demo CLIP, but data.name is "
        f"{config.data.name!r}. Get real weights ({CLIP_DOWNLOAD}) and pass "
        "--config.clip.path=~/clip-b16-datacomp.")
  demo_set = config.retllm.dataset == "demo" or (config.retllm.demo_data and
                                                 not config.retllm.data_dir)
  if "retllm" in names and not demo_set:  # demo sets (retllm.demo_data) run the demo models
    if not config.retllm.model_path:
      raise errors.ConfigError(
          "config.retllm.model_path is empty, which selects the random demo Qwen2.5-VL, but "
          f"retllm.dataset is {config.retllm.dataset!r}. Get real weights ({QWEN_DOWNLOAD}) and "
          "pass --config.retllm.model_path=~/qwen2.5-vl-7b.")
    if not config.clip.path:
      raise errors.ConfigError(
          "config.clip.path is empty, which selects the random demo CLIP, but retllm.dataset is "
          f"{config.retllm.dataset!r}. Get real weights ({CLIP_DOWNLOAD}) and pass "
          "--config.clip.path=~/clip-b16-datacomp.")
