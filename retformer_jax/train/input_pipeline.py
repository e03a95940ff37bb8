"""Batches of (query vector, neighbour vectors, label) for RetFormer, sharded over processes.

The inputs are arrays, not images: query image vectors from the split's embedding store
(memory-mapped), neighbour rows from the neighbours stage, and the KB's image/text vectors for
those rows. `QuerySet` holds exactly that, so tests (and other JAX code) can pass arrays in
directly and the stages pass the KB API's objects.

Order is a pure function of (seed, epoch): the iterator state {epoch, position, seed} is all a
checkpoint needs to resume at the same batch. Each process reads only the rows of the global
batch that its devices hold and `jax.make_array_from_process_local_data` assembles them.
Evaluation pads the last batch and returns a mask, so every host runs the same number of steps.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any, Iterator, Protocol

import jax
import numpy as np
from jax.sharding import NamedSharding


class VectorKB(Protocol):
  def image(self, rows: np.ndarray) -> np.ndarray: ...

  def text(self, rows: np.ndarray) -> np.ndarray: ...


class ArrayKB:
  """A KB held in two in-memory arrays [M, d] (tests, small data)."""

  def __init__(self, image: np.ndarray, text: np.ndarray):
    if image.shape != text.shape:
      raise ValueError(f"ArrayKB: image {image.shape} and text {text.shape} shapes differ.")
    self._image, self._text = image, text
    self.size, self.dim = image.shape

  def image(self, rows):
    return self._image[np.asarray(rows)]

  def text(self, rows):
    return self._text[np.asarray(rows)]


@dataclasses.dataclass(frozen=True)
class QuerySet:
  """One split's inputs. Row i of every array is example i of the split."""

  image: Any  # [N, d] query image vectors (np.ndarray or np.memmap)
  labels: np.ndarray  # int64 [N], -1 = unknown
  neighbor_rows: np.ndarray  # int64 [N, k] KB rows, best first
  kb: VectorKB

  def __post_init__(self):
    n = len(self.labels)
    if self.image.shape[0] != n or self.neighbor_rows.shape[0] != n:
      raise ValueError(f"QuerySet rows disagree: {self.image.shape[0]} query vectors, {n} labels, "
                       f"{self.neighbor_rows.shape[0]} neighbour lists; rebuild the store and "
                       "neighbours of this split (stages embed, neighbors).")
    if self.neighbor_rows.ndim != 2:
      raise ValueError(f"neighbor_rows must be [N, k], got {self.neighbor_rows.shape}.")

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def k(self) -> int:
    return self.neighbor_rows.shape[1]

  def read(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Host arrays for examples `idx` (the query's own text is never read)."""
    idx = np.asarray(idx, np.int64)
    rows = self.neighbor_rows[idx]
    return {
        "z": np.asarray(self.image[idx], np.float32),
        "nb_image": np.asarray(self.kb.image(rows), np.float32),
        "nb_text": np.asarray(self.kb.text(rows), np.float32),
        "label": np.asarray(self.labels[idx], np.int32),
    }


def process_rows(sharding: NamedSharding, global_batch: int) -> slice:
  """The contiguous rows of a [global_batch, ...] array that this process's devices hold."""
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  bounds = {(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
            for s in index_map.values()}
  lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
  if sum(b - a for a, b in bounds) != hi - lo:
    raise ValueError("This process's devices do not hold a contiguous block of the batch; "
                     "build the mesh with config.mesh so that `data` follows process order.")
  return slice(lo, hi)


def to_global(local: dict[str, np.ndarray], sharding: NamedSharding, global_batch: int):
  return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
          for k, v in local.items()}


def steps_per_epoch(data: QuerySet, global_batch: int) -> int:
  """Full batches of labelled examples per epoch (the remainder is dropped)."""
  labelled = int(np.count_nonzero(np.asarray(data.labels) >= 0))
  if labelled < global_batch:
    raise ValueError(f"config.train.batch_size={global_batch} exceeds the {labelled} "
                     "labelled training examples; lower it.")
  return labelled // global_batch


class TrainIterator:
  """Endless shuffled batches over the labelled examples; drops each epoch's remainder."""

  def __init__(self, data: QuerySet, global_batch: int, seed: int, sharding: NamedSharding):
    self.data, self.global_batch, self.sharding = data, global_batch, sharding
    self._valid = np.flatnonzero(np.asarray(data.labels) >= 0)
    self.steps_per_epoch = steps_per_epoch(data, global_batch)
    n_data = sharding.mesh.shape["data"]
    if global_batch % n_data:
      raise ValueError(f"config.train.batch_size={global_batch} is not a multiple of the "
                       f"{n_data} devices on the mesh's data axis.")
    self._rows = process_rows(sharding, global_batch)
    self.epoch, self.position, self.seed = 0, 0, int(seed)
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._ahead: tuple[tuple[int, int], concurrent.futures.Future] | None = None
    self._perm_epoch, self._perm = -1, None

  def get_state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

  def set_state(self, state: dict) -> None:
    self.epoch, self.position, self.seed = (int(state["epoch"]), int(state["position"]),
                                            int(state["seed"]))
    self._ahead = None

  def _indices(self, epoch: int, position: int) -> np.ndarray:
    if self._perm_epoch != epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self._valid)
      self._perm_epoch = epoch
    start = position * self.global_batch
    return self._perm[start:start + self.global_batch][self._rows]

  def _next_pos(self, epoch, position):
    position += 1
    return (epoch + 1, 0) if position == self.steps_per_epoch else (epoch, position)

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    key = (self.epoch, self.position)
    if self._ahead is not None and self._ahead[0] == key:
      local = self._ahead[1].result()
    else:
      local = self.data.read(self._indices(*key))
    self.epoch, self.position = self._next_pos(*key)
    nxt = (self.epoch, self.position)
    idx = self._indices(*nxt)
    self._ahead = (nxt, self._pool.submit(self.data.read, idx))
    return to_global(local, self.sharding, self.global_batch)

  def close(self) -> None:
    self._pool.shutdown(wait=True)


def eval_batches(data: QuerySet, global_batch: int, sharding: NamedSharding):
  """Yields (global batch with a bool `mask`, the global example indices of the batch).

  Every process runs ceil(N / global_batch) steps; padded rows repeat example 0, mask False.
  """
  n = len(data)
  rows = process_rows(sharding, global_batch)
  for start in range(0, n, global_batch):
    idx = np.arange(start, start + global_batch)
    mask = idx < n
    idx = np.where(mask, idx, 0)
    local = data.read(idx[rows])
    local["mask"] = mask[rows]
    yield to_global(local, sharding, global_batch), idx, mask
