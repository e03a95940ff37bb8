"""What training, evaluation and RetLLM read from the KB stages' outputs.

    store = api.open_query_store(workdir, config, "train")  # EmbeddingStore of "<data>:<split>"
    store.image, store.text            # float16 memmaps [N, d], L2-normalised
    store.labels, store.ids            # int64 [N];  store.captions(rows) -> list[str]
    kb = api.open_kb(workdir, config)  # KnowledgeBase over config.kb.sources
    kb.image(rows), kb.text(rows), kb.labels(rows), kb.captions(rows)
    nb = api.load_neighbors(workdir, config, "train")
    nb.rows, nb.sims                   # int64 / float32 [N, k], best first

Rows of a query store follow the split's order (row i = example i; an unreadable example is
dropped and listed in store.manifest["skipped"], and store.source_index maps rows back).
Everything opened here is checked: stores of different encoders, neighbours computed against
an older index or another query store raise instead of returning mismatched vectors.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from retformer_jax.kb import index as index_lib
from retformer_jax.kb import layout
from retformer_jax.kb import neighbors as nb_lib
from retformer_jax.kb import store as store_lib
from retformer_jax.kb.knowledge_base import KnowledgeBase
from retformer_jax.kb.store import EmbeddingStore


def open_query_store(workdir: str, config, split: str) -> EmbeddingStore:
  return EmbeddingStore(layout.store_dir(workdir, layout.query_source(config, split).name))


def open_kb(workdir: str, config) -> KnowledgeBase:
  return KnowledgeBase(index_lib.open_stores(workdir, config))


def open_index(workdir: str, config) -> index_lib.KBIndex:
  return index_lib.KBIndex(workdir, config)


@dataclasses.dataclass(frozen=True)
class Neighbors:
  rows: np.ndarray  # int64 [N, k] global KB rows, best first
  sims: np.ndarray  # float32 [N, k] cosine similarities
  manifest: dict

  @property
  def k(self) -> int:
    return self.rows.shape[1]

  @property
  def fingerprint(self) -> str:
    return self.manifest["fingerprint"]


def load_neighbors(workdir: str, config, split: str) -> Neighbors:
  folder = layout.neighbors_dir(workdir, config.kb.name, split)
  path = os.path.join(folder, "manifest.json")
  if not os.path.exists(path):
    raise nb_lib.NeighborsError(
        f"No neighbours of split {split!r} in KB {config.kb.name!r} ({folder}); run the "
        "neighbors stage (--config.stages=\"('neighbors',)\").")
  manifest = layout.read_json(path)
  query = open_query_store(workdir, config, split)
  index_manifest = index_lib.read_manifest(workdir, config)
  index_fp = layout.fingerprint([index_manifest["fingerprint"], index_lib.search_params(config)])
  indexed = list(dict.fromkeys(s["source"] for s in index_manifest["segments"]))
  configured = [s.name for s in layout.kb_sources(config)]
  if indexed != configured:
    raise nb_lib.NeighborsError(
        f"config.kb.sources gives {configured} but the index of KB {config.kb.name!r} covers "
        f"{indexed}: rerun the index and neighbors stages "
        "(--config.stages=\"('embed','index','neighbors')\").")
  if manifest["index_fingerprint"] != index_fp or manifest["query_fingerprint"] != \
      query.fingerprint:
    raise nb_lib.NeighborsError(
        f"The neighbours in {folder} were computed against another index or query store than "
        "the ones on disk now (the KB or the embeddings changed); rerun the neighbors stage.")
  if manifest["k"] != config.neighbors.k:
    raise nb_lib.NeighborsError(
        f"{folder} holds k={manifest['k']} neighbours but config.neighbors.k="
        f"{config.neighbors.k}; rerun the neighbors stage.")
  store_lib.check_compatible(manifest["encoder"], query.encoder, f"neighbours in {folder}",
                             f"query store {query.path}")
  return Neighbors(rows=np.load(os.path.join(folder, "rows.npy")),
                   sims=np.load(os.path.join(folder, "sims.npy")), manifest=manifest)
