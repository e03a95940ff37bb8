"""Exact backend: brute-force inner product on device, the KB sharded over all local devices.

Each device holds N / D rows, scores the query batch against them and keeps its local top-k
(`lax.top_k`, or `lax.approx_max_k` on TPU); the D x k candidates are then merged into the
global top-k. Nothing is saved but the row count: the vectors are the store's.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


class ExactIndex:
  name = "exact"

  def __init__(self, dim: int, cfg, devices=None):
    self.dim, self.cfg = dim, cfg
    self.devices = list(devices if devices is not None else jax.local_devices())
    self.mesh = Mesh(np.asarray(self.devices), ("kb",))
    self._x = None
    self._n = 0
    self._search_fns = {}

  @property
  def ntotal(self) -> int:
    return self._n

  def build(self, x_nd: np.ndarray, seed: int = 0) -> None:
    del seed
    self._x, self._n = None, 0
    self.add(x_nd)

  def add(self, x_nd: np.ndarray, chunk: int = 65536) -> None:
    """Appends rows: one padded float32 host copy, put on the devices, then dropped."""
    old = self._n
    self._n = old + len(x_nd)
    d = len(self.devices)
    per = max(1, -(-self._n // d))
    padded = np.zeros((per * d, self.dim), np.float32)
    if old:
      padded[:old] = np.asarray(self._x)[:old]
    for lo in range(0, len(x_nd), chunk):
      part = np.asarray(x_nd[lo:lo + chunk], np.float32)
      padded[old + lo:old + lo + len(part)] = part
    self._x = None
    self._x = jax.device_put(padded, NamedSharding(self.mesh, P("kb", None)))
    del padded
    self._search_fns.clear()

  def _fn(self, k: int):
    if k in self._search_fns:
      return self._search_fns[k]
    per = self._x.shape[0] // len(self.devices)
    k_local = min(k, per)
    n, approx, target = self._n, bool(self.cfg.approx), float(self.cfg.recall_target)

    def local(q_md, x_nd):
      s_mn = jnp.einsum("md,nd->mn", q_md, x_nd, precision=jax.lax.Precision.HIGHEST)
      offset = jax.lax.axis_index("kb") * per
      row_n = offset + jnp.arange(per)
      s_mn = jnp.where(row_n[None, :] < n, s_mn, -jnp.inf)
      if approx:
        v, i = jax.lax.approx_max_k(s_mn, k_local, recall_target=target)
      else:
        v, i = jax.lax.top_k(s_mn, k_local)
      return v, (i + offset).astype(jnp.int32)

    sharded = jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P("kb", None)),
                            out_specs=(P(None, "kb"), P(None, "kb")))

    @jax.jit
    def search(q_md, x_nd):
      v_mc, i_mc = sharded(q_md, x_nd)  # c = devices x k_local candidates
      kk = min(k, v_mc.shape[1])
      v, pos = jax.lax.top_k(v_mc, kk)
      return v, jnp.take_along_axis(i_mc, pos, axis=1)

    self._search_fns[k] = search
    return search

  def search(self, q_md: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    m, k = len(q_md), int(k)
    sims = np.full((m, k), -np.inf, np.float32)
    ids = np.full((m, k), -1, np.int64)
    if self._n == 0 or m == 0:
      return sims, ids
    fn = self._fn(k)
    b = int(self.cfg.query_batch)
    q = np.asarray(q_md, np.float32)
    for lo in range(0, m, b):
      chunk = q[lo:lo + b]
      pad = np.zeros((b, self.dim), np.float32)
      pad[:len(chunk)] = chunk
      v, i = fn(pad, self._x)
      v, i = np.asarray(v)[:len(chunk)], np.asarray(i)[:len(chunk)]
      kk = v.shape[1]
      valid = np.isfinite(v)
      sims[lo:lo + len(chunk), :kk] = np.where(valid, v, -np.inf)
      ids[lo:lo + len(chunk), :kk] = np.where(valid, i, -1)
    return sims, ids

  def save(self, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)

  @classmethod
  def load(cls, folder: str, dim: int, cfg, vectors=None) -> "ExactIndex":
    if vectors is None:
      raise ValueError("The exact index keeps no copy of the vectors: load it with the store's "
                       "image array.")
    index = cls(dim, cfg)
    index.build(vectors)
    return index
