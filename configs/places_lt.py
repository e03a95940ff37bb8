"""RetFormer on Places-LT: 62,500 training images in 365 scene classes (max 4,980, min 5;
Many/Medium/Few = 131/163/71), val 7,300, test 36,500 — Places365 filtered with the OLTR lists
(shipped with the package). Published anchors (CLIP ViT-B/16): LIFT 51.5, RetFormer 52.3.

  tfds build places365_small --file_format=array_record --data_dir=$DATA   # once, ~30 GB
      # (pip install '.[prep]'); the first run then scans it once to match the lists (cached)
  python -m retformer_jax.main --config=configs/places_lt.py --workdir=$WORKDIR \
    --config.clip.path=/ckpt/CLIP-ViT-B-16-DataComp.XL-s13B-b90K --config.data.tfds_data_dir=$DATA

Smoke run on a CPU: --config=configs/places_lt.py:runlocal
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import recipe  # noqa: E402


def get_config(arg: str | None = None):
  c = recipe.paper("places_lt", loss="lace")
  c.data.lt_splits_dir = ""  # the lists shipped with retformer_jax
  c.data.train_split = "train"
  c.data.eval_splits = ("test",)
  c.train.eval_split = "val"
  if arg == "runlocal":
    c = recipe.runlocal(c)
  return c
