"""RetLLM on MS-COCO (Karpathy 5k test: 5,000 images, 25,000 captions), Qwen2.5-VL-7B.

  python -m retformer_jax.main --config=configs/retllm_coco.py --workdir=DIR \
    --config.clip.path=/ckpt/clip-vit-b16 --config.retllm.model_path=/ckpt/Qwen2.5-VL-7B-Instruct \
    --config.retllm.karpathy_json=/data/dataset_coco.json \
    --config.retllm.data_dir=/data/coco  # the folder holding val2014/

From TFDS instead of the Karpathy JSON: --config.retllm.dataset=coco_tfds
--config.retllm.data_dir=TFDS_DATA_DIR (coco_captions/2014 prepared as array_record; its `test`
split is Karpathy's 5k test).

Or, with the json beside the images (the data set's folder as downloaded):
--config.retllm.data_dir=/data/coco holding dataset_coco.json and val2014/
Metrics: DIR/retllm/coco/metrics.json; --config.retllm.i2t_scoring=listwise for the
released driver's "pick the index" image->text variant.

`get_config("runlocal")` scores only the first queries (a smoke run of the real setup).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.get_config()
  c.stages = ("retllm",)
  c.clip.batch_size = 128
  c.retllm.dataset = "coco"
  c.retllm.top_k = 5
  c.retllm.dtype = "bfloat16"
  if arg == "runlocal":
    c = common.runlocal(c)
    c.retllm.num_queries = 8
  return c

