"""The paper's RetFormer recipe, shared by the data set configs (on top of common.get_config).

25 epochs, AdamW lr 5e-4, weight decay 0.1, batch 256, 1 warmup epoch then cosine, label
smoothing and mixup, k = 32 neighbours, L = 4 fusion layers, CLIP ViT-B/16 (DataComp-1B) frozen,
Faiss HNSW index over the downstream training set. bf16 compute on TPU/GPU.
"""

import ml_collections

from configs import common


def paper(data_name: str, loss: str) -> ml_collections.ConfigDict:
  c = common.get_config()
  c.data.name = data_name
  c.data.num_workers = 16
  c.clip.dtype = "bfloat16"
  c.clip.batch_size = 1024
  c.model.dtype = "bfloat16"
  c.model.num_layers = 4
  c.model.use_retrieval = True
  c.model.modalities = "image_text"
  c.train.epochs = 25
  c.train.batch_size = 256
  c.train.lr = 5e-4
  c.train.weight_decay = 0.1
  c.train.warmup_epochs = 1.0
  c.train.loss = loss  # "lace" (logit-adjusted) for long-tailed sets, "ce" for WebVision
  c.neighbors.k = 32
  c.kb.name = "downstream"
  c.kb.sources = ("downstream",)
  c.index.backend = "faiss"  # HNSW
  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Smoke run on a CPU: a few hundred examples per split, tiny model, float32."""
  c = common.runlocal(c)
  c.data.max_examples = 256
  c.data.num_workers = 2
  c.clip.dtype = "float32"
  c.model.dtype = "float32"
  c.neighbors.k = 8
  c.index.backend = "exact"
  return c
