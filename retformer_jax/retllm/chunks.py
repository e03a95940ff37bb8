"""Resumable, multi-process scoring in chunks of queries: one runner for every benchmark family.

A family hands over its queries (in scoring order), what each query's scores depend on
(`inputs`: e.g. its candidate ids, stored with the scores and checked on reload) and a function
scoring a chunk. Each chunk is one .npz (atomic), named by its range and a digest of its
queries, so runs that order or limit the queries differently never share a file. Chunk c
belongs to process c mod P; after a barrier, process 0 reads every chunk back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Callable

from absl import logging
import numpy as np

from retformer_jax import atomic_io, preemption


@dataclasses.dataclass(frozen=True)
class Chunk:
  number: int
  queries: np.ndarray  # query ids, in scoring order
  path: str


def plan(queries: np.ndarray, chunk_size: int, out_dir: str, first: int = 0) -> list[Chunk]:
  """The chunks of `queries` (already in scoring order), numbered from `first` (a family with
  several subsets numbers on across them, so that c mod P spreads the work evenly)."""
  if chunk_size < 1:
    raise ValueError(f"retllm.chunk_size must be >= 1, got {chunk_size}.")
  chunks = []
  for c, start in enumerate(range(0, len(queries), chunk_size)):
    q = np.ascontiguousarray(queries[start:start + chunk_size], np.int64)
    digest = hashlib.sha256(q.tobytes()).hexdigest()[:10]
    name = f"chunk_{start:07d}_{start + len(q):07d}_{digest}.npz"
    chunks.append(Chunk(first + c, q, os.path.join(out_dir, name)))
  return chunks


def load(chunk: Chunk, inputs: np.ndarray) -> dict[str, np.ndarray]:
  """The arrays of a finished chunk, refusing a file written for other inputs."""
  with np.load(chunk.path) as z:
    if np.array_equal(z["queries"], chunk.queries) and np.array_equal(z["candidates"], inputs):
      return {k: z[k] for k in z.files if k not in ("queries", "candidates")}
  raise RuntimeError(f"{chunk.path} holds other queries or candidates than this run; "
                     f"remove {os.path.dirname(os.path.dirname(chunk.path))} to rescore.")


def score_own(label: str, chunks: list[Chunk], inputs_of: Callable[[Chunk], np.ndarray],
              score: Callable[[Chunk], dict[str, np.ndarray]], process: tuple[int, int],
              pairs_per_query: int = 1) -> None:
  """Scores and saves the unfinished chunks that belong to this process (c mod P).

  score(chunk) -> arrays with one row per query of the chunk (saved beside `queries` and
  `candidates` = inputs_of(chunk))."""
  index, count = process
  todo = []
  for ch in chunks:
    if ch.number % count != index:
      continue
    if os.path.isfile(ch.path):
      load(ch, inputs_of(ch))  # finished by an earlier run; refuses a file of other inputs
    else:
      todo.append(ch)
  t0, scored = time.time(), 0
  for done, ch in enumerate(todo, 1):
    arrays = score(ch)
    atomic_io.save_npz(ch.path, queries=ch.queries, candidates=inputs_of(ch), **arrays)
    preemption.check(f"RetLLM {label}, chunk {ch.number + 1} of {len(chunks)} (saved)")
    scored += len(ch.queries)
    elapsed = max(time.time() - t0, 1e-9)
    left = sum(len(c.queries) for c in todo[done:])
    logging.info("retllm %s [process %d/%d]: chunk %d/%d done, %.1f pairs/s, ETA %.0f s",
                 label, index, count, done, len(todo), scored * pairs_per_query / elapsed,
                 left * elapsed / scored)


def read_all(chunks: list[Chunk], inputs_of: Callable[[Chunk], np.ndarray],
             queries: np.ndarray) -> dict[str, np.ndarray]:
  """Every saved array, rows in the order of `queries` (each query in exactly one chunk)."""
  row = {int(q): r for r, q in enumerate(queries)}
  out: dict[str, np.ndarray] = {}
  for ch in chunks:
    if not os.path.isfile(ch.path):
      raise RuntimeError(f"{ch.path} is missing after every process finished scoring: the "
                         "process that owns it failed or does not see this folder (WORKDIR "
                         "must be shared by all hosts); rerun to score it.")
    rows = [row[int(q)] for q in ch.queries]
    for name, value in load(ch, inputs_of(ch)).items():
      if name not in out:
        out[name] = np.zeros((len(queries),) + value.shape[1:], value.dtype)
      out[name][rows] = value
  return out


def run(label: str, queries: np.ndarray, inputs: np.ndarray,
        score: Callable[[np.ndarray], dict[str, np.ndarray]], folder: str, chunk_size: int,
        process: tuple[int, int], barrier: Callable[[str], None],
        pairs_per_query: int = 1, first: int = 0) -> dict[str, np.ndarray] | None:
  """Plans `queries` into chunks under `folder`, scores this process's, waits for the others;
  process 0 returns every saved array in the order of `queries` (the others None).

  inputs: one row per query id (what its scores depend on, checked on reload);
  score(query ids) -> arrays with one row per query; first: the first chunk's number."""
  os.makedirs(folder, exist_ok=True)
  chunks = plan(np.asarray(queries, np.int64), chunk_size, folder, first)
  inputs_of = lambda ch: inputs[ch.queries]  # noqa: E731
  score_own(label, chunks, inputs_of, lambda ch: score(ch.queries), process, pairs_per_query)
  barrier(f"retllm-{label}")
  if process[0] != 0:
    return None
  return read_all(chunks, inputs_of, np.asarray(queries, np.int64))


def count(num_queries: int, chunk_size: int) -> int:
  """How many chunks `plan` cuts num_queries into."""
  return -(-num_queries // chunk_size)


def text_digest(*texts: str) -> int:
  """A stable int64 of some strings (what a row's scores depend on, for `inputs`)."""
  h = hashlib.sha256("\x1f".join(texts).encode()).digest()[:8]
  return int(np.frombuffer(h, np.int64)[0])
