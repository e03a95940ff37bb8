"""RetFormer on ImageNet-LT: 115,846 training images in 1,000 classes (max 1,280, min 5);
val 20,000 (model selection), test 50,000. Published anchors (CLIP ViT-B/16): LIFT 78.3,
RetFormer 81.9 top-1 (Many 85.0, Medium 80.9, Few 76.8).

  tfds build imagenet_lt --manual_dir=$ILSVRC --file_format=array_record --data_dir=$DATA
      # once (pip install '.[prep]'); $ILSVRC holds ILSVRC2012_img_train.tar and _val.tar
  python -m retformer_jax.main --config=configs/imagenet_lt.py --workdir=$WORKDIR \
    --config.clip.path=/ckpt/CLIP-ViT-B-16-DataComp.XL-s13B-b90K --config.data.tfds_data_dir=$DATA

Smoke run on a CPU: --config=configs/imagenet_lt.py:runlocal
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import recipe  # noqa: E402


def get_config(arg: str | None = None):
  c = recipe.paper("imagenet_lt", loss="lace")
  c.data.train_split = "train"
  c.data.eval_splits = ("test",)
  c.train.eval_split = "val"
  if arg == "runlocal":
    c = recipe.runlocal(c)
  return c
