"""The KB's ANN index: one segment per source store, searched together and merged.

A segment is a backend index (faiss / scann / exact) over a row range of one store's image
vectors (the whole store unless config.index.segment_size cuts it), saved in
WORKDIR/index/<kb>/seg-<source>-<part>-<fingerprint>/ with a `segment.json` (written last) that
records the store's fingerprint, rows, encoder and dim. Processes build segments round-robin.
Adding a source to config.kb.sources builds only the new source's segments: the KB grows
without re-indexing (or retraining) anything else.

Global KB rows are the concatenation of the sources' store rows in config order; the manifest
(`manifest.json`) lists the segments with their row offsets. Opening the index checks every
segment against its current store: a store re-embedded since is a clear error (`open_index`).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from retformer_jax import errors, preemption, progress
from retformer_jax.kb import layout, store as store_lib
from retformer_jax.kb.index_exact import ExactIndex
from retformer_jax.kb.index_faiss import FaissIndex
from retformer_jax.kb.index_scann import ScannIndex
from retformer_jax.kb.rescore import rescore  # noqa: F401  (part of this module's API)
from retformer_jax.parallel import hosts

log = logging.getLogger(__name__)
FORMAT = "retformer-index-v1"


class IndexMismatchError(errors.UserError, ValueError):
  pass


def backend_class(name: str):
  if name == "faiss":
    return FaissIndex
  if name == "scann":
    return ScannIndex
  if name == "exact":
    return ExactIndex
  raise ValueError(f"config.index.backend={name!r}; use one of 'faiss', 'scann', 'exact'.")


# Settings read at search time only: changing them re-runs `neighbors`, not `index`.
SEARCH_KEYS = ("ef_search", "nprobe", "mmap", "num_leaves_to_search", "approx", "recall_target",
               "query_batch")


def backend_params(config) -> dict:
  """The backend and its build-time settings (what a segment's files depend on)."""
  name = config.index.backend
  backend_class(name)
  params = {k: v for k, v in config.index[name].to_dict().items() if k not in SEARCH_KEYS}
  return {"backend": name, "params": params}


def search_params(config) -> dict:
  name = config.index.backend
  params = {k: v for k, v in config.index[name].to_dict().items() if k in SEARCH_KEYS}
  return {"backend": name, "params": params, "rerank_depth": int(config.index.rerank_depth)}


def plan(stores: list[store_lib.EmbeddingStore], params: dict, segment_size: int) -> list[dict]:
  """Segments of the KB: each source's rows cut into ranges of at most segment_size (0 = one
  segment per source), with their global row offset and an input fingerprint."""
  segments, offset = [], 0
  for st in stores:
    size = segment_size if segment_size > 0 else max(st.count, 1)
    for part, lo in enumerate(range(0, max(st.count, 1), size)):
      hi = min(st.count, lo + size)
      fp = layout.fingerprint({"index": params, "store": st.fingerprint, "rows": [lo, hi]})
      segments.append({"source": st.name, "part": part, "rows": [lo, hi], "offset": offset + lo,
                       "count": hi - lo, "fingerprint": fp,
                       "dir": f"seg-{st.name}-{part:04d}-{fp[:12]}"})
    offset += st.count
  return segments


def build(workdir: str, config) -> dict | None:
  """Builds the missing segments (round-robin over processes) and writes the manifest (process
  0); returns it on process 0. Segments whose inputs are unchanged are reused as they are."""
  stores = store_lib.open_stores(workdir, config)
  by_name = {st.name: st for st in stores}
  params = backend_params(config)
  folder = layout.index_dir(workdir, config.kb.name)
  cls = backend_class(params["backend"])
  cfg = config.index[params["backend"]]
  segments = plan(stores, params, int(config.index.segment_size))
  mine = hosts.mine(segments)
  todo = [s for s in mine
          if not os.path.exists(os.path.join(folder, s["dir"], "segment.json"))]
  if len(todo) < len(mine):
    log.info("index of KB %s: %d of %d segments up to date, reused", config.kb.name,
             len(mine) - len(todo), len(mine))
  bar = progress.Progress(f"index of KB {config.kb.name}",
                          sum(s["count"] for s in todo), "vectors")
  for seg in todo:
    preemption.check(f"indexing KB {config.kb.name!r}, before segment {seg['dir']}")
    seg_dir = os.path.join(folder, seg["dir"])
    seg_json = os.path.join(seg_dir, "segment.json")
    st = by_name[seg["source"]]
    lo, hi = seg["rows"]
    log.info("indexing %s rows [%d, %d) with %s", st.name, lo, hi, params["backend"])
    index = cls(st.dim, cfg)
    index.build(st.image[lo:hi], seed=config.seed)
    index.save(seg_dir)
    layout.write_json(seg_json, {**seg, "store_fingerprint": st.fingerprint,
                                 "encoder": st.encoder, "dim": st.dim, **params})
    bar.update(seg["count"])
  bar.done()
  hosts.barrier(f"index-segments-{config.kb.name}")
  manifest = None
  if hosts.process()[0] == 0:
    manifest = {"format": FORMAT, "kb": config.kb.name, **params,
                "encoder": stores[0].encoder, "dim": stores[0].dim,
                "count": int(sum(st.count for st in stores)), "segments": segments,
                "fingerprint": layout.fingerprint([s["fingerprint"] for s in segments])}
    layout.write_json(os.path.join(folder, "manifest.json"), manifest)
  hosts.barrier(f"index-manifest-{config.kb.name}")
  return manifest


def read_manifest(workdir: str, config) -> dict:
  path = os.path.join(layout.index_dir(workdir, config.kb.name), "manifest.json")
  if not os.path.exists(path):
    raise IndexMismatchError(f"No index for KB {config.kb.name!r} at {os.path.dirname(path)}; "
                             "run the index stage (--config.stages=\"('index',)\").")
  return layout.read_json(path)


def is_current(workdir: str, config) -> bool:
  """True when the saved index matches the current stores, sources and backend settings."""
  try:
    manifest = read_manifest(workdir, config)
    stores = store_lib.open_stores(workdir, config)
  except (IndexMismatchError, store_lib.StoreError):
    return False
  want = plan(stores, backend_params(config), int(config.index.segment_size))
  return [s["fingerprint"] for s in manifest["segments"]] == [s["fingerprint"] for s in want]


class KBIndex:
  """Searches every segment and merges: (sims, global KB rows), best first, ties by row."""

  def __init__(self, workdir: str, config):
    self.manifest = read_manifest(workdir, config)
    folder = layout.index_dir(workdir, config.kb.name)
    stores = store_lib.open_stores(workdir, config)
    names = [s.name for s in stores]
    indexed = list(dict.fromkeys(s["source"] for s in self.manifest["segments"]))
    if indexed != names:
      raise IndexMismatchError(
          f"The index of KB {config.kb.name!r} covers sources {indexed} but config.kb.sources "
          f"gives {names}; rerun the index stage to extend it.")
    by_name = {st.name: st for st in stores}
    cls = backend_class(self.manifest["backend"])
    cfg = config.index[self.manifest["backend"]]
    self.segments = []
    self.rerank_depth = int(config.index.rerank_depth)
    for seg in self.manifest["segments"]:
      st = by_name[seg["source"]]
      seg_dir = os.path.join(folder, seg["dir"])
      info = layout.read_json(os.path.join(seg_dir, "segment.json"))
      lo, hi = info["rows"]
      if info["store_fingerprint"] != st.fingerprint or hi > st.count:
        raise IndexMismatchError(
            f"Index segment {seg_dir} was built from another version of store {st.name!r} "
            f"(fingerprint {info['store_fingerprint']}) than the one on disk "
            f"({st.count} vectors, {st.fingerprint}); rerun the index stage.")
      store_lib.check_compatible(info["encoder"], st.encoder, f"index segment {seg_dir}",
                                 f"store {st.path}")
      vectors = st.image[lo:hi]
      loaded = cls.load(seg_dir, st.dim, cfg,
                        vectors=vectors if self.manifest["backend"] != "faiss" else None)
      self.segments.append((seg["offset"], loaded, vectors))
    self.encoder = self.manifest["encoder"]
    self.size = int(self.manifest["count"])
    # What a search returns depends on the segments and on the search-time settings.
    self.fingerprint = layout.fingerprint([self.manifest["fingerprint"], search_params(config)])

  def search(self, q_md: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims, rows = [], []
    depth = max(k, self.rerank_depth)
    for offset, index, vectors in self.segments:
      s, i = index.search(q_md, depth)
      if self.rerank_depth:
        s, i = rescore(q_md, i, vectors)
      sims.append(s)
      rows.append(np.where(i >= 0, i + offset, -1))
    return merge_topk(np.concatenate(sims, 1), np.concatenate(rows, 1), k)


def open_index(workdir: str, config) -> KBIndex:
  """The saved index of KB config.kb.name, checked against the current stores."""
  return KBIndex(workdir, config)


def merge_topk(sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Best k per query by similarity, ties broken by lower row; missing entries (row -1) last."""
  sims = np.where(rows >= 0, sims, -np.inf)
  order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -sims), axis=-1)[:, :k]
  return (np.take_along_axis(sims, order, 1).astype(np.float32),
          np.take_along_axis(rows, order, 1).astype(np.int64))
