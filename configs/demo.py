"""Demo: the whole pipeline on a generated long-tailed data set, on CPU, in minutes.

  python -m retformer_jax.main --config=configs/demo.py --workdir=/tmp/retformer_demo

Uses an embedded tiny CLIP (random weights, written to WORKDIR/demo_clip as a HuggingFace
folder and loaded back through the real loader), so nothing is downloaded.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402


def get_config(arg: str | None = None):
  c = common.get_config()
  c.data.name = "demo"
  c.clip.path = ""
  c.clip.batch_size = 128
  c.eval.batch_size = 256
  # The demo set is small: shift the Many/Medium/Few thresholds to its scale.
  c.eval.many_above = 60
  c.eval.few_below = 15
  # Index: exact search (the KB is ~1k vectors); faiss/scann are for real KBs.
  c.index.backend = "exact"
  # A small fusion model trained briefly; LACE for the long tail.
  c.model.num_layers = 1
  c.model.num_heads = 2
  c.model.mlp_ratio = 2
  c.train.batch_size = 128
  c.train.epochs = 10
  c.train.lr = 1e-2
  c.train.loss = "lace"
  c.train.log_every = 20
  c.checkpoint.every_steps = 50
  if arg == "runlocal":
    c = common.runlocal(c)
  return c
