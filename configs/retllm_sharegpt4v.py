"""RetLLM on ShareGPT4V-1k (the first 1,000 share-captioner entries, long captions): Long-CLIP
candidates re-ranked by Qwen2.5-VL-7B; Recall@1/5/10 both ways (+ the CLIP-only clip_ twins).

  python -m retformer_jax.convert.longclip --checkpoint=/ckpt/longclip-L.pt --out=/ckpt/longclip-L
  python -m retformer_jax.main --config=configs/retllm_sharegpt4v.py --workdir=DIR \
    --config.clip.path=/ckpt/longclip-L --config.retllm.model_path=/ckpt/Qwen2.5-VL-7B-Instruct \
    --config.retllm.data_dir=/data/ShareGPT4V

DATA_DIR holds share-captioner_coco_lcs_sam_1246k_1107.json and the image folders it names
(coco/, sam/, ...).

Long captions are tokenised to Long-CLIP's 248 positions (clip.max_text_length); with a plain
CLIP folder as the coarse encoder add --config.clip.max_text_length=77.
Metrics: DIR/retllm/sharegpt4v/metrics.json. `get_config("runlocal")` scores only the first
queries (a smoke run of the real setup).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.get_config()
  c.stages = ("retllm",)
  c.clip.batch_size = 64
  # Long-CLIP's text tower reads 248 tokens (a plain CLIP folder: --config.clip.max_text_length=77).
  c.clip.max_text_length = 248
  c.retllm.dataset = "sharegpt4v"
  c.retllm.sharegpt4v_count = 1000
  c.retllm.top_k = 5
  c.retllm.dtype = "bfloat16"
  if arg == "runlocal":
    c = common.runlocal(c)
    c.retllm.num_queries = 8
  return c
