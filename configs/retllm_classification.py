"""RetLLM zero-shot classification: CLIP's top-K classes of each image re-scored by
Qwen2.5-VL-7B; top-1 (and Many / Medium / Few on long-tailed sets) beside CLIP's zero-shot.

The reference's list layout (label_idx.json + dataset_list.json in data_dir):
  python -m retformer_jax.main --config=configs/retllm_classification.py --workdir=DIR \
    --config.clip.path=/ckpt/clip-vit-b16 --config.retllm.model_path=/ckpt/Qwen2.5-VL-7B-Instruct \
    --config.retllm.data_dir=/data/my_classes

One of our labelled sets (its test split, its data keys as in configs/<name>.py):
  python -m retformer_jax.main --config=configs/retllm_classification.py:imagenet_lt \
    --workdir=DIR --config.clip.path=... --config.retllm.model_path=... \
    --config.data.manual_dir=/data/imagenet  # cifar100_lt | imagenet_lt | places_lt | inat

Metrics: DIR/retllm/classification/metrics.json. `:runlocal` (or `:imagenet_lt,runlocal`)
scores only the first images.
"""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402

DATA_CONFIGS = ("cifar100_lt", "imagenet_lt", "places_lt", "inat", "webvision")


def get_config(arg: str | None = None):
  parts = [p for p in (arg or "").split(",") if p]
  c = common.get_config()
  c.stages = ("retllm",)
  c.clip.batch_size = 128
  c.retllm.dataset = "classification"
  c.retllm.top_k = 5
  c.retllm.dtype = "bfloat16"
  for part in parts:
    if part in DATA_CONFIGS:
      c.data = importlib.import_module(f"configs.{part}").get_config().data
      c.retllm.class_source = "data"
    elif part != "runlocal":
      raise ValueError(f"retllm_classification.py:{part}: use one of {DATA_CONFIGS} and/or "
                       "runlocal.")
  if "runlocal" in parts:
    c = common.runlocal(c)
    c.retllm.num_queries = 8
  return c
