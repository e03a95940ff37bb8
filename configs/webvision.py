"""RetFormer on WebVision 1.0 (noisy labels): 2.4M Google + Flickr images of the 1,000
ImageNet classes with their web text, which the knowledge base uses as captions; evaluated
(top-1 and top-5) on WebVision val and on ImageNet val.

  python -m retformer_jax.data.webvision_builder --manual_dir=$WEBVISION --data_dir=$DATA
      # once; $WEBVISION is the extracted download (layout in webvision_builder.py)
  tfds build imagenet2012 --manual_dir=$ILSVRC --file_format=array_record --data_dir=$DATA
      # once, for the imagenet_val split (pip install '.[prep]')
  python -m retformer_jax.main --config=configs/webvision.py --workdir=$WORKDIR \
    --config.clip.path=/ckpt/CLIP-ViT-B-16-DataComp.XL-s13B-b90K --config.data.tfds_data_dir=$DATA

Smoke run on a CPU: --config=configs/webvision.py:runlocal
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import recipe  # noqa: E402


def get_config(arg: str | None = None):
  c = recipe.paper("webvision", loss="ce")
  c.data.train_split = "train"
  c.data.eval_splits = ("val", "imagenet_val")
  c.train.eval_split = "val"
  c.eval.top5 = True
  c.eval.batch_size = 1024
  if arg == "runlocal":
    c = recipe.runlocal(c)
  return c
