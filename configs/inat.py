"""RetFormer on iNaturalist 2018: 437,513 training images of 8,142 species; the 24,426
validation images are the test set.

  tfds build i_naturalist2018 --file_format=array_record --data_dir=$DATA   # once, ~120 GB
      # (pip install '.[prep]')
  python -m retformer_jax.main --config=configs/inat.py --workdir=$WORKDIR \
    --config.clip.path=/ckpt/CLIP-ViT-B-16-DataComp.XL-s13B-b90K --config.data.tfds_data_dir=$DATA

Smoke run on a CPU: --config=configs/inat.py:runlocal
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import recipe  # noqa: E402


def get_config(arg: str | None = None):
  c = recipe.paper("inat2018", loss="lace")
  c.data.train_split = "train"
  c.data.eval_splits = ("test",)
  c.train.eval_split = ""  # the validation set is the test set
  c.eval.batch_size = 1024
  if arg == "runlocal":
    c = recipe.runlocal(c)
  return c
