"""Every key the pipeline reads, with its default. Data set configs start from `get_config()`.

No code reads a key that is not declared here, so `--config.x.y=...` with a typo, or with the
wrong type, fails at flag parsing instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections

# The paper's stages for RetFormer, in order.
RETFORMER_STAGES = ("zeroshot", "embed", "index", "neighbors", "train", "eval")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = RETFORMER_STAGES

  # Device mesh. -1 = all remaining devices. Batches are sharded on `data`, weights on `model`.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.model = 1
  # Logical axis name -> mesh axis (None = replicated). Used by nn.logical_to_mesh_sharding.
  c.mesh.axis_rules = (
      ("batch", "data"),
      ("embed", None),
      ("mlp", "model"),
      ("heads", "model"),
      ("kv_heads", "model"),
      ("head_dim", None),
      ("vocab", "model"),
      ("classes", None),
      ("layers", None),
      ("length", None),
      ("patch", None),
      ("channels", None),
      ("neighbors", None),
      ("kb", "data"),
  )

  # Frozen CLIP. path="" uses the embedded demo CLIP (tiny, random, built in the workdir).
  c.clip = ml_collections.ConfigDict()
  c.clip.path = ""
  c.clip.dtype = "float32"  # compute dtype: "bfloat16" on TPU/GPU
  c.clip.scan_layers = True
  c.clip.batch_size = 256  # global batch for embedding
  c.clip.prompt = "a photo of a {name}."
  c.clip.max_text_length = 77

  # The labelled data set (queries for train/eval).
  c.data = ml_collections.ConfigDict()
  c.data.name = "demo"  # demo | cifar100_lt | imagenet_lt | places_lt | inat2018 | webvision
  c.data.tfds_data_dir = ""  # "" = TFDS default (~/tensorflow_datasets)
  c.data.manual_dir = ""  # for data sets TFDS cannot download (ImageNet, WebVision)
  c.data.lt_splits_dir = ""  # OLTR split lists (ImageNet_LT_*.txt, Places_LT_*.txt)
  c.data.train_split = "train"
  c.data.eval_splits = ("test",)
  c.data.num_workers = 4  # decoding threads
  # Generated demo set (used when data.name == "demo").
  c.data.demo = ml_collections.ConfigDict()
  c.data.demo.num_classes = 20
  c.data.demo.max_per_class = 200
  c.data.demo.imbalance = 50.0  # max/min class count
  c.data.demo.val_per_class = 10
  c.data.demo.test_per_class = 30
  c.data.demo.image_size = 32
  c.data.demo.label_noise = 0.0  # fraction of training labels flipped
  c.data.demo.seed = 0

  # Many / Medium / Few class buckets by training-set count: many > hi, few < lo.
  c.eval = ml_collections.ConfigDict()
  c.eval.many_above = 100
  c.eval.few_below = 20
  c.eval.batch_size = 512
  c.eval.top5 = False
  c.eval.num_explained = 8  # predictions drawn in the explanation sheet

  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config so that it runs on a laptop CPU in minutes."""
  c.clip.batch_size = 64
  c.eval.batch_size = 64
  return c
