"""Retrieval benchmark: faiss HNSW, faiss IVF-PQ (+ exact re-scoring), ScaNN and exact search.

    python bench/retrieval.py --sizes=100000,1000000 --queries=10000 --k=32

Data: N unit vectors in d = 512 around 1000 cluster centres, with a 128-dim intrinsic space (like
CLIP embeddings: same-cluster cosine about 0.5), queries drawn from the same distribution. The
vectors are written as the store keeps them (fp16 .npy) and memory-mapped back: backends build
from that file, and re-scoring (`rerank_depth`) reads candidates from it per query batch.
For each backend: build time, bytes per vector of the saved index (what stays in RAM: codes, ids,
coarse centroids; the store is not counted, exact counts its float32 copy), queries/s and
recall@32 against the exact backend's answer. Queries go in chunks through exact and every other
backend in turn, so the machine's load weighs on all alike. Backends are the ones the `index`
stage uses (retformer_jax/kb/). The last line printed is one JSON object: "headline" (the fastest
backend at the largest N within --max_bytes and --min_recall, with exact_qps of the same run),
then per size, per backend, then "exponents" (log-log slope of queries/s and build time vs N).
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
  ivfpq = cfg.faiss.copy_and_resolve_references()
  ivfpq.factory = f"IVF{{nlist}},PQ{args.pq_m}x4fs"  # {nlist} = nlist_factor * sqrt(N)
  ivfpq.nlist_factor = args.nlist_factor
  ivfpq.nprobe, ivfpq.train_size = args.nprobe, min(n, 100_000)
  scann = cfg.scann.copy_and_resolve_references()
  scann.num_leaves = int(args.scann_leaves_factor * np.sqrt(n))
  scann.num_leaves_to_search = max(1, int(scann.num_leaves * args.scann_search))
  scann.training_sample_size = min(n, 100_000)
  scann.reorder_k = args.scann_reorder
  codes = scann.copy_and_resolve_references()
  codes.reorder_k = 0  # codes only in RAM; re-scored from the fp16 store
  codes.dims_per_block = args.scann_codes_dims_per_block
  out = {"faiss_ivfpq": ("faiss", ivfpq, args.rerank), "scann": ("scann", scann, 0),
         "scann_codes": ("scann", codes, args.rerank), "faiss_hnsw": ("faiss", hnsw, 0)}
  if n > args.hnsw_max_n:
    del out["faiss_hnsw"]
  return out


def search_fn(index, k: int, store, rerank_depth: int):
  """queries -> ids [m, k]: the index's top k, or its top rerank_depth re-scored exactly from
  the memory-mapped store (as KBIndex.search does with config.index.rerank_depth)."""
  def search(q):
    if not rerank_depth:
      return index.search(q, k)[1]
    _, cand = index.search(q, rerank_depth)
    s, i = index_lib.rescore(q, cand, store)
    return index_lib.merge_topk(s, i, k)[1]
  return search


def write_store(x: np.ndarray, path: str) -> np.ndarray:
  """The KB's vectors as the store keeps them (fp16 .npy), memory-mapped back."""
  np.save(path, x)
  return np.load(path, mmap_mode="r")


def run_size(n: int, args, tmp: str) -> dict:
  d, k = args.dim, args.k
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((args.clusters, args.latent)).astype(np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  basis = np.linalg.qr(rng.standard_normal((d, args.latent)))[0].T.astype(np.float32)
  t = time.perf_counter()
  store = write_store(clustered(n, d, centres, basis, seed=1, dtype=np.float16),
                      os.path.join(tmp, f"store-{n}.npy"))
  q = clustered(args.queries, d, centres, basis, seed=2)
  print(f"[N={n}] data {time.perf_counter() - t:.1f}s", flush=True)
  cfg = common.get_config().index
  t = time.perf_counter()
  exact = index_lib.backend_class("exact")(d, cfg.exact)
  exact.build(store)
  out = {"exact": {"backend": "exact", "build_s": time.perf_counter() - t,
                   "bytes_per_vector": 4.0 * d}}  # its float32 copy of the KB
  exact.search(q[:cfg.exact.query_batch], k)  # compile
  searches = {"exact": lambda qq: exact.search(qq, k)[1]}
  for name, (backend, bcfg, rerank) in backends(n, args).items():
    if args.backends and name not in args.backends.split(","):
      continue
    folder = os.path.join(tmp, f"{name}-{n}")
    t = time.perf_counter()
    index = index_lib.backend_class(backend)(d, bcfg)
    index.build(store, seed=0)
    build_s = time.perf_counter() - t
    index.save(folder)
    out[name] = {"backend": name, "build_s": build_s, "bytes_per_vector": folder_bytes(folder) / n}
    if rerank:
      out[name]["rerank_depth"] = rerank
    shutil.rmtree(folder, ignore_errors=True)
    searches[name] = search_fn(index, k, store, rerank)
    searches[name](q[:64])  # warm up (and compile the re-scoring)
    print(f"[N={n}] {name}: built in {build_s:.1f}s", flush=True)
  # Interleaved: each chunk of queries goes through exact, then every other backend, so that
  # the machine's load (shared cores) weighs on all of them alike.
  seconds = {name: 0.0 for name in searches}
  found = {name: [] for name in searches}
  for lo in range(0, len(q), args.chunk):
    for name, search in searches.items():
      t = time.perf_counter()
      found[name].append(search(q[lo:lo + args.chunk]))
      seconds[name] += time.perf_counter() - t
      # Untimed pause: the exact search frees GBs of score buffers as it returns, and on a
      # 2-core machine that release slows whatever runs next for up to ~1 s (measured: IVF-PQ
      # + re-scoring at a third of its speed right after exact, full speed 2 s later). The
      # pause keeps one backend's aftermath off the next one's clock (exact's own release is
      # then counted to nobody, which flatters exact).
      time.sleep(args.settle)
  truth = np.concatenate(found["exact"])
  exact_qps = len(q) / seconds["exact"]
  for name in searches:
    row = out[name]
    row.update(qps=len(q) / seconds[name], exact_qps=exact_qps,
               recall_at_32=recall(np.concatenate(found[name]), truth))
    row["x_exact"] = row["qps"] / exact_qps
    print(f"[N={n}] {name}: " + ", ".join(
        f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in row.items()),
          flush=True)
  out["exact_qps"] = exact_qps
  return out


def headline(results: dict, n: int, max_bytes: float, min_recall: float) -> dict:
  """The fastest backend at N = n within the RAM and recall bounds (its row plus N)."""
  rows = [r for name, r in results[str(n)].items() if isinstance(r, dict) and name != "exact"
          and r["bytes_per_vector"] <= max_bytes and r["recall_at_32"] >= min_recall]
  if not rows:
    return {"n": n, "backend": None}
  best = max(rows, key=lambda r: r["qps"])
  return {"n": n, **best}


def exponents(results: dict, sizes: list[int]) -> dict:
  """Per backend, the log-log slope of queries/s (and build time) against N."""
  out = {}
  names = results[str(sizes[0])].keys()
  for name in names:
    pts = [(n, results[str(n)][name]) for n in sizes
           if isinstance(results[str(n)].get(name), dict)]
    if len(pts) < 2:
      continue
    logn = np.log([n for n, _ in pts])
    out[name] = {key: float(np.polyfit(logn, np.log([r[key] for _, r in pts]), 1)[0])
                 for key in ("qps", "build_s")}
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
  p.add_argument("--nprobe", type=int, default=8)
  p.add_argument("--tmp", default=None, help="where the store and saved indexes go (disk)")
  p.add_argument("--nlist_factor", type=float, default=2.0, help="IVF lists = factor * sqrt(N)")
  p.add_argument("--scann_reorder", type=int, default=128, help="ScaNN in-index reorder")
  p.add_argument("--rerank", type=int, default=192, help="re-scoring depth from the store")
  p.add_argument("--scann_leaves_factor", type=float, default=1.0, help="leaves = f * sqrt(N)")
  p.add_argument("--scann_search", type=float, default=0.05, help="fraction of leaves searched")
  p.add_argument("--scann_codes_dims_per_block", type=int, default=4,
                 help="scann_codes: AH dims per 4-bit code")
  p.add_argument("--hnsw_max_n", type=int, default=100_000, help="skip HNSW above this N")
  p.add_argument("--backends", default="", help="comma list; empty = all")
  p.add_argument("--chunk", type=int, default=1000, help="queries per interleaved round")
  p.add_argument("--settle", type=float, default=2.0,
                 help="untimed seconds between backends in a round (0 = none)")
  p.add_argument("--max_bytes", type=float, default=100.0, help="headline: RAM bound")
  p.add_argument("--min_recall", type=float, default=0.95, help="headline: recall@k bound")
  args = p.parse_args()
  sizes = [int(s) for s in args.sizes.split(",") if s]
  results = {"dim": args.dim, "queries": args.queries, "k": args.k, "cpus": os.cpu_count(),
             "load_before": os.getloadavg()[0]}
  with tempfile.TemporaryDirectory(prefix="bench_retrieval_", dir=args.tmp) as tmp:
    for n in sizes:
      results[str(n)] = run_size(n, args, tmp)
  results["load_after"] = os.getloadavg()[0]
  results["exponents"] = exponents(results, sizes)
  results = {"headline": headline(results, sizes[-1], args.max_bytes, args.min_recall),
             **results}
  print(json.dumps(results))


if __name__ == "__main__":
  main()
