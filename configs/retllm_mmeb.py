"""RetLLM on MMEB (VLM2Vec's evaluation set: 36 subsets in 4 meta-tasks, 1,000 queries each,
queries and candidates of text, image or both): hit@1 per subset, per meta-task and overall,
with the CLIP-only row.

  git clone https://huggingface.co/datasets/TIGER-Lab/MMEB-eval /data/mmeb/MMEB-eval
  unzip /data/mmeb/MMEB-eval/images.zip -d /data/mmeb/eval_images
  python -m retformer_jax.main --config=configs/retllm_mmeb.py --workdir=DIR \
    --config.clip.path=/ckpt/clip-vit-l14-336 \
    --config.retllm.model_path=/ckpt/Qwen2.5-VL-7B-Instruct --config.retllm.data_dir=/data/mmeb

Metrics: DIR/retllm/mmeb/metrics.json. Some subsets only:
--config.retllm.subsets=OK-VQA,MSCOCO_t2i. `get_config("runlocal")` scores only the first
queries of each subset.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.get_config()
  c.stages = ("retllm",)
  c.clip.batch_size = 128
  c.retllm.dataset = "mmeb"
  c.retllm.top_k = 5
  c.retllm.dtype = "bfloat16"
  if arg == "runlocal":
    c = common.runlocal(c)
    c.retllm.num_queries = 8
  return c
