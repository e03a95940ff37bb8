"""Top-k KB neighbours of every query of a split, with self / duplicate exclusion.

When the KB holds the query split itself (the "downstream" KB at training time), a query's own
row and every KB row whose image vector is bit-identical to the query's are removed: the search
goes k + extra_depth deep, filters, and doubles the depth for queries left with fewer than k.
Similarities are then recomputed exactly from the stored vectors and ties ordered by row, so the
result is deterministic whichever backend found the candidates.

Output, in WORKDIR/neighbors/<kb>/<split>/: rows.npy int64 [N, k], sims.npy float32 [N, k],
manifest.json (written last) with the input fingerprint. Work is split in chunks of queries,
each written atomically (parts/), round-robin over processes; process 0 joins them.
`load_neighbors` reads them back, checked against the index and query store on disk now.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import numpy as np

from retformer_jax import atomic_io, errors, preemption, progress
from retformer_jax.kb import layout, source_spec
from retformer_jax.kb import index as index_lib
from retformer_jax.kb import store as store_lib
from retformer_jax.kb.knowledge_base import KnowledgeBase
from retformer_jax.parallel import hosts

log = logging.getLogger(__name__)
FORMAT = "retformer-neighbors-v1"


class NeighborsError(errors.UserError, ValueError):
  pass


def search_excluding(q_md: np.ndarray, q_rows_in_kb: np.ndarray | None, kb: KnowledgeBase,
                     search, k: int, *, exclude_duplicates: bool, extra_depth: int):
  """(rows [m, k], sims [m, k]) for queries q_md; `q_rows_in_kb[i]` is query i's own KB row
  (None when the KB does not hold the queries: nothing is excluded)."""
  m = len(q_md)
  q16 = np.asarray(q_md, np.float16)
  q32 = q16.astype(np.float32)
  exclude = q_rows_in_kb is not None
  if k > kb.size - (1 if exclude else 0):
    raise NeighborsError(f"neighbors.k={k} but the KB holds only {kb.size} entries; lower "
                         "--config.neighbors.k or add sources.")
  out_rows = np.full((m, k), -1, np.int64)
  todo = np.arange(m)
  # One candidate past the k-th: a tie at the k-th place is settled by row only once a strictly
  # lower similarity shows, so the result does not depend on the backend's order among equals.
  depth = min(kb.size, k + 1 + (extra_depth if exclude else 0))
  while len(todo):
    _, cand = search(q32[todo], depth)
    keep = cand >= 0
    vec = kb.image(np.where(keep, cand, 0))
    if exclude:
      keep &= cand != q_rows_in_kb[todo, None]
      if exclude_duplicates:
        keep &= ~np.all(vec == q16[todo, None, :], axis=-1)
    csims = np.einsum("mcd,md->mc", vec.astype(np.float32), q32[todo])
    done = np.zeros(len(todo), bool)
    for j in range(len(todo)):
      got, s = cand[j][keep[j]], csims[j][keep[j]]
      order = np.lexsort((got, -s))
      got, s = got[order], s[order]
      if depth < kb.size and not (len(got) > k and s[k] < s[k - 1]):
        continue  # too few left, or a tie at the k-th place may go on past this depth
      if len(got) < k:
        raise NeighborsError(f"Only {len(got)} KB entries remain for a query after removing "
                             f"itself and its duplicates; neighbors.k={k} is too large.")
      out_rows[todo[j]] = got[:k]
      done[j] = True
    todo = todo[~done]
    depth = min(kb.size, depth * 2)
  sims = np.einsum("mkd,md->mk", kb.image(out_rows).astype(np.float32), q32)
  return _sort(out_rows, sims)


def _sort(rows, sims):
  order = np.lexsort((rows, -sims), axis=-1)
  return np.take_along_axis(rows, order, 1), np.take_along_axis(sims, order, 1).astype(np.float32)


def fingerprint(index_fp: str, query_fp: str, config, excluding: bool) -> str:
  n = config.neighbors
  return layout.fingerprint({"index": index_fp, "query": query_fp, "k": n.k,
                             "exclude": excluding, "dups": bool(n.exclude_duplicates)})


def compute_split(workdir: str, config, split: str, kb: KnowledgeBase,
                  index: index_lib.KBIndex) -> dict | None:
  """Neighbours of one query split; skipped when its manifest matches the current inputs."""
  query = store_lib.open_query_store(workdir, config, split)
  store_lib.check_compatible(kb.encoder, query.encoder, f"KB {config.kb.name!r}",
                             f"query store {query.path}")
  offset = kb.offset_of(query.name) if config.neighbors.exclude_self else None
  fp = fingerprint(index.fingerprint, query.fingerprint, config, offset is not None)
  folder = layout.neighbors_dir(workdir, config.kb.name, split)
  man_path = os.path.join(folder, "manifest.json")
  if os.path.exists(man_path) and layout.read_json(man_path)["fingerprint"] == fp:
    log.info("neighbours of %s in KB %s are up to date, skipping", split, config.kb.name)
    return layout.read_json(man_path)
  parts = os.path.join(folder, "parts")
  job = os.path.join(parts, "job.json")
  hosts.barrier(f"nb-start-{split}")
  if hosts.process()[0] == 0:
    if not os.path.exists(job) or layout.read_json(job)["fingerprint"] != fp:
      shutil.rmtree(parts, ignore_errors=True)  # parts of older inputs: derived data, redo
      layout.write_json(job, {"fingerprint": fp})
  hosts.barrier(f"nb-job-{split}")
  n, k, chunk = query.count, int(config.neighbors.k), int(config.neighbors.chunk_size)
  chunks = range(-(-n // chunk))
  todo = [c for c in hosts.mine(chunks)
          if not os.path.exists(os.path.join(parts, f"{c:06d}.npz"))]
  if len(todo) < len(hosts.mine(chunks)):
    log.info("neighbours of %s: resuming, %d of %d chunks already done", split,
             len(hosts.mine(chunks)) - len(todo), len(hosts.mine(chunks)))
  bar = progress.Progress(f"neighbours of {split}", len(todo), "chunks")
  for c in todo:
    path = os.path.join(parts, f"{c:06d}.npz")
    lo, hi = c * chunk, min(n, (c + 1) * chunk)
    own = None if offset is None else offset + np.arange(lo, hi, dtype=np.int64)
    rows, sims = search_excluding(np.asarray(query.image[lo:hi]), own, kb, index.search, k,
                                  exclude_duplicates=bool(config.neighbors.exclude_duplicates),
                                  extra_depth=int(config.neighbors.extra_depth))
    atomic_io.save_npz(path, rows=rows, sims=sims)
    bar.update()
    preemption.check(f"neighbours of {split!r}, chunk {c + 1} of {len(chunks)}")
  bar.done()
  hosts.barrier(f"nb-parts-{split}")
  manifest = None
  if hosts.process()[0] == 0:
    rows = np.zeros((n, k), np.int64)
    sims = np.zeros((n, k), np.float32)
    for c in chunks:
      with np.load(os.path.join(parts, f"{c:06d}.npz")) as z:
        rows[c * chunk:(c + 1) * chunk], sims[c * chunk:(c + 1) * chunk] = z["rows"], z["sims"]
    atomic_io.save_npy(os.path.join(folder, "rows.npy"), rows)
    atomic_io.save_npy(os.path.join(folder, "sims.npy"), sims)
    manifest = {"format": FORMAT, "fingerprint": fp, "kb": config.kb.name, "split": split,
                "index_fingerprint": index.fingerprint, "query_store": query.name,
                "query_fingerprint": query.fingerprint, "k": k, "count": n,
                "excluded_self": offset is not None, "encoder": kb.encoder}
    layout.write_json(man_path, manifest)
    shutil.rmtree(parts, ignore_errors=True)
  hosts.barrier(f"nb-done-{split}")
  return manifest


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
  """The neighbours of `split`; raises when they were computed against another index, query
  store, KB source list or k than the current ones."""
  folder = layout.neighbors_dir(workdir, config.kb.name, split)
  path = os.path.join(folder, "manifest.json")
  if not os.path.exists(path):
    raise NeighborsError(
        f"No neighbours of split {split!r} in KB {config.kb.name!r} ({folder}); run the "
        "neighbors stage (--config.stages=\"('neighbors',)\").")
  manifest = layout.read_json(path)
  query = store_lib.open_query_store(workdir, config, split)
  index_manifest = index_lib.read_manifest(workdir, config)
  index_fp = layout.fingerprint([index_manifest["fingerprint"], index_lib.search_params(config)])
  indexed = list(dict.fromkeys(s["source"] for s in index_manifest["segments"]))
  configured = [s.name for s in source_spec.kb_sources(config)]
  if indexed != configured:
    raise NeighborsError(
        f"config.kb.sources gives {configured} but the index of KB {config.kb.name!r} covers "
        f"{indexed}: rerun the index and neighbors stages "
        "(--config.stages=\"('embed','index','neighbors')\").")
  if manifest["index_fingerprint"] != index_fp or manifest["query_fingerprint"] != \
      query.fingerprint:
    raise NeighborsError(
        f"The neighbours in {folder} were computed against another index or query store than "
        "the ones on disk now (the KB or the embeddings changed); rerun the neighbors stage.")
  if manifest["k"] != config.neighbors.k:
    raise NeighborsError(
        f"{folder} holds k={manifest['k']} neighbours but config.neighbors.k="
        f"{config.neighbors.k}; rerun the neighbors stage.")
  store_lib.check_compatible(manifest["encoder"], query.encoder, f"neighbours in {folder}",
                             f"query store {query.path}")
  return Neighbors(rows=np.load(os.path.join(folder, "rows.npy")),
                   sims=np.load(os.path.join(folder, "sims.npy")), manifest=manifest)
