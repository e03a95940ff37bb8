"""RetLLM demo: the whole retllm stage on CPU in about a minute, nothing downloaded.

  python -m retformer_jax.main --config=configs/retllm_demo.py --workdir=/tmp/retllm_demo

Gallery: the first images of the generated demo set's test split, each with its caption
(metrics in WORKDIR/retllm/demo/). Any benchmark family, on its demo set written in the real
on-disk layout under WORKDIR/retllm_data/NAME and read back by the real reader:

  python -m retformer_jax.main --config=configs/retllm_demo.py --workdir=/tmp/retllm_demo \
    --config.retllm.dataset=mmeb  # flickr30k coco sharegpt4v urban1k sugarcrepe mmeb classification

CLIP and Qwen2.5-VL are tiny random models written to WORKDIR/demo_clip and WORKDIR/demo_qwen
as HuggingFace folders and loaded back through the real loaders, so the recalls show that the
pipeline runs, not what the method achieves.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.get_config()
  c.stages = ("retllm",)
  c.data.name = "demo"
  c.clip.path = ""
  c.clip.batch_size = 64
  c.clip.dtype = "float32"
  c.retllm.model_path = ""
  c.retllm.dataset = "demo"
  c.retllm.demo_data = True  # data_dir "": the benchmark's demo set, written under WORKDIR
  c.retllm.num_images = 40
  c.retllm.num_queries = 24
  c.retllm.top_k = 5
  c.retllm.chunk_size = 8
  c.retllm.dtype = "float32"
  c.retllm.batch_size = 5
  # Demo images are 32 px: 4..16 merged visual tokens per image.
  c.retllm.min_pixels = 4 * 28 * 28
  c.retllm.max_pixels = 16 * 28 * 28
  # The tiny model has 4 decoder layers: watch layers 1 and 2 for the trigger.
  c.retllm.injection_layer_lo = 0
  c.retllm.injection_layer_hi = 3
  if arg == "runlocal":
    c = common.runlocal(c)
  return c
