"""RetFormer on CIFAR-100-LT (imbalance 100): 10,847 training images in 100 classes, evaluated
on the balanced CIFAR-100 test set. Published anchor (CLIP ViT-B/16): LIFT 81.7 top-1.

  tfds build cifar100 --file_format=array_record --data_dir=$DATA   # once (pip install '.[prep]')
  python -m retformer_jax.main --config=configs/cifar100_lt.py --workdir=$WORKDIR \
    --config.clip.path=/ckpt/CLIP-ViT-B-16-DataComp.XL-s13B-b90K --config.data.tfds_data_dir=$DATA

Smoke run on a CPU: --config=configs/cifar100_lt.py:runlocal
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import recipe  # noqa: E402


def get_config(arg: str | None = None):
  c = recipe.paper("cifar100_lt", loss="lace")
  c.data.lt_imbalance = 100.0
  c.data.train_split = "train"
  c.data.eval_splits = ("test",)
  c.train.eval_split = ""  # CIFAR-100-LT has no validation split
  if arg == "runlocal":
    c = recipe.runlocal(c)
  return c
