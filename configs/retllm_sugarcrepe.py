"""RetLLM on SugarCrepe (7 subsets of COCO val2017 images with a caption and a hard negative):
accuracy per subset and mean, listwise (the reference's scoring: the MLLM names the matching
caption) and pointwise (P('True') per caption), with the CLIP-only row.

  python -m retformer_jax.main --config=configs/retllm_sugarcrepe.py --workdir=DIR \
    --config.clip.path=/ckpt/clip-vit-l14-336 \
    --config.retllm.model_path=/ckpt/Qwen2.5-VL-7B-Instruct \
    --config.retllm.data_dir=/data/sugarcrepe  # data/<subset>.json + val2017/

Metrics: DIR/retllm/sugarcrepe/metrics.json. One subset: --config.retllm.subsets=swap_att.
`get_config("runlocal")` scores only the first rows of each subset.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.get_config()
  c.stages = ("retllm",)
  c.clip.batch_size = 128
  c.retllm.dataset = "sugarcrepe"
  c.retllm.choice_scoring = "both"
  c.retllm.dtype = "bfloat16"
  if arg == "runlocal":
    c = common.runlocal(c)
    c.retllm.num_queries = 8
  return c
