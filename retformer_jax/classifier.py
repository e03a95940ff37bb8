"""A trained workdir as a classifier of single images, on whatever devices this process has.

    from retformer_jax import Classifier
    clf = Classifier.from_workdir("/tmp/retformer_demo")
    for p in clf.predict(list_of_uint8_hwc):
      p.top_k       # [(class name, probability)] * 5, best first
      p.probs       # float32 [num_classes]
      p.neighbors   # the 5 most-attended KB neighbours: caption, attention, similarity, label

The workdir holds everything: the config of its run (WORKDIR/config.json, written by main),
the frozen encoder (config.clip.path, or WORKDIR/demo_clip), the KB stores and index, and the
checkpoints, whose parameters are read as host arrays, so a model trained on any mesh runs on
one CPU. An image is embedded with the frozen encoder, its k neighbours are searched in the KB's
index exactly as the neighbors stage searches them for a split the KB does not hold (nothing is
excluded: a new image is not in the KB), then the RetFormer gives logits and a softmax gives
probabilities. The checkpoint is the one `eval` reports (config.checkpoint.step: -1 = best by
validation top-1 if recorded, else the newest; a damaged one is named and the next used).

"Attended": the attention of the query slot over its k neighbours, averaged over heads and over
the fusion layers, in the image-queries-text attention (the query image reading the neighbours'
captions) for the image+text model, in the self-attention for a single-modality model; the
explanation sheet of `eval` draws the same weights. An MLP-only model (use_retrieval=False) has
none: its neighbours are listed by similarity and their attention is NaN.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from retformer_jax import errors
from retformer_jax.data import registry
from retformer_jax.data import rgb
from retformer_jax.kb import api
from retformer_jax.kb import encoder as encoder_lib
from retformer_jax.kb import neighbors as neighbors_lib
from retformer_jax.kb import store as store_lib
from retformer_jax.models import retformer
from retformer_jax.train import checkpointing, run_record

CONFIG_RECORD = "config.json"  # written by main at the start of every run
ENCODE_BATCH = 8  # images embedded per forward (a padded batch: small for single images)


class WorkdirError(errors.UserError, ValueError):
  """The folder given as a workdir holds no trained run to predict with."""


@dataclasses.dataclass(frozen=True)
class Neighbor:
  row: int  # global KB row
  caption: str
  attention: float  # the query's attention weight on this neighbour (NaN without retrieval)
  similarity: float  # cosine similarity of the image vectors
  label: str  # the KB entry's class name, "" when it has none of ours


@dataclasses.dataclass(frozen=True)
class Prediction:
  top_k: list[tuple[str, float]]  # (class name, probability), best first
  probs: np.ndarray  # float32 [num_classes]
  neighbors: list[Neighbor]  # most attended first

  def to_json(self) -> dict:
    return {"top_k": [{"class": c, "prob": p} for c, p in self.top_k],
            "neighbors": [dataclasses.asdict(n) for n in self.neighbors]}


def _tuples(value):
  """JSON lists back to the tuples the config declares (stages, splits, axis rules)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config main recorded in WORKDIR/config.json."""
  path = os.path.join(workdir, CONFIG_RECORD)
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} does not exist: {workdir} is not a workdir of a run (main "
                       "writes its config there; rerun the training command once to record it).")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


class Classifier:
  """Predicts classes of images with a trained RetFormer and its KB (see the module doc)."""

  def __init__(self, config, workdir: str, step: int | None = None):
    workdir = os.path.abspath(os.path.expanduser(workdir))
    self.config, self.workdir = config, workdir
    ckpt_dir = os.path.join(workdir, "checkpoints")
    step = config.checkpoint.step if step is None else step
    run_record.for_eval(ckpt_dir, config, explicit_step=step >= 0)
    self.class_names = list(registry.load(config.data).class_names)
    self.step, params = checkpointing.load_params_with_step(ckpt_dir, step)
    self._params = jax.tree.map(np.asarray, params)
    self.model = retformer.build(config.model, len(self.class_names))
    self.k = int(config.neighbors.k)
    self.kb = api.open_kb(workdir, config)
    self._index = api.open_index(workdir, config)
    small = ml_collections.ConfigDict(config.to_dict())
    small.embed.batch_size = ENCODE_BATCH
    self._encoder = encoder_lib.load_encoder(small, workdir)
    store_lib.check_compatible(self._encoder.info, self.kb.encoder, "the configured encoder",
                               f"the KB of {workdir}")
    self._apply = jax.jit(self._forward)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None) -> "Classifier":
    """The run trained in `workdir` (its recorded config); `step` as config.checkpoint.step."""
    return cls(read_config(os.path.abspath(os.path.expanduser(workdir))), workdir, step)

  def _forward(self, params, z_bd, nb_image_bkd, nb_text_bkd):
    logits, state = self.model.apply({"params": params}, z_bd, nb_image_bkd, nb_text_bkd,
                                     train=False, mutable=["intermediates"])
    probs = jax.nn.softmax(logits.astype(np.float32), axis=-1)
    cfg = self.model.cfg
    if cfg.use_retrieval and cfg.num_layers > 0:
      attention = retformer.query_attention(state["intermediates"])[:, 1:]
    else:
      attention = np.full(nb_image_bkd.shape[:2], np.nan, np.float32)
    return probs, attention

  def neighbors(self, z_nd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(KB rows [n, k], image similarities [n, k]) of embedded images, best first."""
    return neighbors_lib.search_excluding(z_nd, None, self.kb, self._index.search, self.k,
                                          exclude_duplicates=False, extra_depth=0)

  def predict(self, images: Sequence, top_k: int = 5, num_neighbors: int = 5,
              batch_size: int = 64) -> list[Prediction]:
    """uint8 [H, W, 3] images (or PIL images, [H, W] grey, RGBA) -> one Prediction each."""
    images = [rgb.to_rgb_uint8(im, "Classifier.predict") for im in images]
    out = []
    for lo in range(0, len(images), batch_size):
      out += self._predict_batch(images[lo:lo + batch_size], top_k, num_neighbors)
    return out

  def _predict_batch(self, images, top_k: int, num_neighbors: int) -> list[Prediction]:
    n = len(images)
    # Stores hold float16 vectors and training read them so: the query goes the same way.
    z = self._encoder.encode_images(images).astype(np.float16).astype(np.float32)
    rows, sims = self.neighbors(z)
    nb_image = self.kb.image(rows).astype(np.float32)
    nb_text = self.kb.text(rows).astype(np.float32)
    pad = -n % ENCODE_BATCH  # a few batch shapes, so a few compilations
    padded = [np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in (z, nb_image, nb_text)]
    probs, attention = (np.asarray(a)[:n] for a in self._apply(self._params, *padded))
    out = []
    for i in range(n):
      best = np.argsort(-probs[i], kind="stable")[:top_k]
      keys = attention[i] if not np.isnan(attention[i]).any() else sims[i]
      order = np.argsort(-keys, kind="stable")[:num_neighbors]
      chosen = rows[i][order]
      # A KB label names one of our classes only in a split of our own data set.
      ours = [self.kb.source_names[s].startswith(f"{self.config.data.name}:")
              for s in self.kb.sources(chosen)]
      labels = np.where(ours, self.kb.labels(chosen), -1)
      captions = self.kb.captions(chosen)
      out.append(Prediction(
          top_k=[(self.class_names[c], float(probs[i, c])) for c in best],
          probs=probs[i].astype(np.float32),
          neighbors=[Neighbor(row=int(r), caption=cap, attention=float(attention[i, j]),
                              similarity=float(sims[i, j]),
                              label=self.class_names[int(l)]
                              if 0 <= int(l) < len(self.class_names) else "")
                     for r, cap, j, l in zip(chosen, captions, order, labels)]))
    return out
