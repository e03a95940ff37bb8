"""Retrieval benchmark: faiss HNSW, faiss IVF-PQ (+ exact re-scoring), ScaNN and exact search.

    python bench/retrieval.py --sizes=100000,1000000 --queries=10000 --k=32

Data: N unit vectors in d = 512 around 1000 cluster centres, with a 128-dim intrinsic space (like
CLIP embeddings: same-cluster cosine about 0.5), queries drawn from the same distribution.
For each backend: build time, bytes per vector (saved index), queries/s, recall@32 against the
exact backend's answer. Backends are the ones the `index` stage uses (retformer_jax/kb/).
The last line printed is one JSON object (per size, per backend).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402
from retformer_jax.kb import index as index_lib  # noqa: E402


def clustered(n: int, d: int, centres: np.ndarray, basis: np.ndarray, seed: int,
              spread: float = 1.0, noise: float = 0.05, chunk: int = 131072,
              dtype=np.float32) -> np.ndarray:
  """n unit vectors with a low intrinsic dimension, like CLIP embeddings: a cluster centre plus
  a spread inside an r-dim latent space, mapped to d dims by `basis` [r, d], plus a little
  isotropic noise."""
  rng = np.random.default_rng(seed)
  r = basis.shape[0]
  out = np.empty((n, d), dtype)
  for lo in range(0, n, chunk):
    m = min(chunk, n - lo)
    z = centres[rng.integers(len(centres), size=m)]
    z = z + rng.standard_normal((m, r), dtype=np.float32) * (spread / np.sqrt(r))
    x = z @ basis + rng.standard_normal((m, d), dtype=np.float32) * (noise / np.sqrt(d))
    out[lo:lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
  hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
  return hits / truth.size


def timed_search(index, q, k, rerank_vectors=None, rerank_depth=0):
  t = time.perf_counter()
  if rerank_depth:
    _, cand = index.search(q, rerank_depth)
    s, i = index_lib.rescore(q, cand, rerank_vectors)
    _, ids = index_lib.merge_topk(s, i, k)
  else:
    _, ids = index.search(q, k)
  return ids, time.perf_counter() - t


def folder_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def backends(n: int, args) -> dict:
  """name -> (backend name, config section, rerank depth); settings scale with N."""
  cfg = common.get_config().index
  hnsw = cfg.faiss.copy_and_resolve_references()
  hnsw.factory = f"HNSW{args.hnsw_m},Flat"
  hnsw.ef_construction, hnsw.ef_search = args.ef_construction, args.ef_search
  nlist = int(args.nlist_factor * np.sqrt(n))
  ivfpq = cfg.faiss.copy_and_resolve_references()
  ivfpq.factory = f"IVF{nlist},PQ{args.pq_m}x4fs"
  ivfpq.nprobe, ivfpq.train_size = args.nprobe, min(n, 100_000)
  scann = cfg.scann.copy_and_resolve_references()
  scann.num_leaves = int(args.scann_leaves_factor * np.sqrt(n))
  scann.num_leaves_to_search = max(1, int(scann.num_leaves * args.scann_search))
  scann.training_sample_size = min(n, 100_000)
  scann.reorder_k = args.scann_reorder
  codes = scann.copy_and_resolve_references()
  codes.reorder_k = 0  # 4-bit codes only in RAM; re-scored from the fp16 store
  return {"scann": ("scann", scann, 0), "scann_codes": ("scann", codes, args.rerank),
          "faiss_ivfpq": ("faiss", ivfpq, args.rerank), "faiss_hnsw": ("faiss", hnsw, 0)}


def run_size(n: int, args, tmp: str) -> dict:
  d, k = args.dim, args.k
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((args.clusters, args.latent)).astype(np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  basis = np.linalg.qr(rng.standard_normal((d, args.latent)))[0].T.astype(np.float32)
  t = time.perf_counter()
  # The KB as the store keeps it (float16); backends convert chunk by chunk.
  x = clustered(n, d, centres, basis, seed=1, dtype=np.float16)
  q = clustered(args.queries, d, centres, basis, seed=2)
  print(f"[N={n}] data {time.perf_counter() - t:.1f}s", flush=True)
  cfg = common.get_config().index
  cached = os.path.join(args.cache, f"exact-{n}-{args.queries}-{args.k}.npz") if args.cache else ""
  if cached and os.path.exists(cached):  # same data (seeded): reuse the exact answer
    with np.load(cached) as z:
      truth, exact_row = z["truth"], json.loads(str(z["exact"]))
  else:
    exact_cls = index_lib.backend_class("exact")
    t = time.perf_counter()
    exact = exact_cls(d, cfg.exact)
    exact.build(x)
    build_exact = time.perf_counter() - t
    exact.search(q[:cfg.exact.query_batch], k)  # compile
    truth, dt = timed_search(exact, q, k)
    del exact
    exact_row = {"qps": args.queries / dt, "recall_at_32": 1.0, "build_s": build_exact,
                 "bytes_per_vector": 4.0 * d}
    if cached:
      os.makedirs(args.cache, exist_ok=True)
      np.savez(cached, truth=truth, exact=json.dumps(exact_row))
  out = {"exact": exact_row}
  print(f"[N={n}] exact: {out['exact']['qps']:.0f} q/s", flush=True)
  for name, (backend, bcfg, rerank) in backends(n, args).items():
    if args.backends and name not in args.backends.split(","):
      continue
    folder = os.path.join(tmp, f"{name}-{n}")
    t = time.perf_counter()
    index = index_lib.backend_class(backend)(d, bcfg)
    index.build(x, seed=0)
    build_s = time.perf_counter() - t
    index.save(folder)
    size = folder_bytes(folder)
    index.search(q[:64], k)  # warm up
    ids, dt = timed_search(index, q, k, rerank_vectors=x, rerank_depth=rerank)
    out[name] = {"qps": args.queries / dt, "recall_at_32": recall(ids, truth), "build_s": build_s,
                 "bytes_per_vector": size / n}
    if rerank:
      out[name]["rerank_depth"] = rerank
    print(f"[N={n}] {name}: " + ", ".join(f"{a}={b:.4g}" for a, b in out[name].items()),
          flush=True)
    del index
    shutil.rmtree(folder, ignore_errors=True)
  out["exact_qps"] = out["exact"]["qps"]
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="100000,1000000")
  p.add_argument("--queries", type=int, default=10000)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--k", type=int, default=32)
  p.add_argument("--clusters", type=int, default=1000)
  p.add_argument("--latent", type=int, default=128, help="intrinsic dimension of the data")
  p.add_argument("--hnsw_m", type=int, default=32)
  p.add_argument("--ef_construction", type=int, default=80)
  p.add_argument("--ef_search", type=int, default=128)
  p.add_argument("--pq_m", type=int, default=128, help="PQ sub-quantizers (4 bits each)")
  p.add_argument("--nprobe", type=int, default=16)
  p.add_argument("--nlist_factor", type=float, default=2.0, help="IVF lists = factor * sqrt(N)")
  p.add_argument("--scann_reorder", type=int, default=128, help="ScaNN in-index reorder")
  p.add_argument("--rerank", type=int, default=256, help="re-scoring depth from the store")
  p.add_argument("--scann_leaves_factor", type=float, default=1.0, help="leaves = f * sqrt(N)")
  p.add_argument("--scann_search", type=float, default=0.05, help="fraction of leaves searched")
  p.add_argument("--backends", default="", help="comma list; empty = all")
  p.add_argument("--cache", default="", help="dir keeping the exact answers between runs")
  args = p.parse_args()
  results = {"dim": args.dim, "queries": args.queries, "k": args.k, "cpus": os.cpu_count()}
  with tempfile.TemporaryDirectory(prefix="bench_retrieval_") as tmp:
    for n in [int(s) for s in args.sizes.split(",") if s]:
      results[str(n)] = run_size(n, args, tmp)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
