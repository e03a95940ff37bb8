"""RetFormer on your own data: a folder of images, or any prepared TFDS classification set.

A folder (train/<class>/*.jpg, test/<class>/*, optional val/<class>/*, optional captions.jsonl
with {"path": "train/cat/1.jpg", "caption": "..."} lines for the KB texts):

  python -m retformer_jax.main --config=configs/image_folder.py --workdir=$WORKDIR \
    --config.data.root=/data/my_images --config.clip.path=~/clip-b16-datacomp

Any prepared TFDS image-classification set, by name (its `train` and `test` splits; others with
--config.data.train_split / --config.data.eval_splits):

  python -m retformer_jax.main --config=configs/image_folder.py --workdir=$WORKDIR \
    --config.data.name=tfds --config.data.tfds_name=food101 \
    --config.data.eval_splits="('validation',)" \
    --config.clip.path=~/clip-b16-datacomp --config.data.tfds_data_dir=$DATA

Many / Medium / Few: classes with more than eval.many_above (100) / fewer than eval.few_below
(20) training images. A val split picks the best checkpoint with
--config.data.eval_splits="('val','test')" --config.train.eval_split=val.
Smoke run on a CPU: --config=configs/image_folder.py:runlocal
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import recipe  # noqa: E402


def get_config(arg: str | None = None):
  c = recipe.paper("image_folder", loss="lace")
  c.data.root = ""  # required: the folder holding train/ and test/
  c.data.train_split = "train"
  c.data.eval_splits = ("test",)
  c.train.eval_split = ""
  if arg == "runlocal":
    c = recipe.runlocal(c)
  return c
