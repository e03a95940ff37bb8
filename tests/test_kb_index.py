"""Index backends: recall@32 against exact search on clustered data, save/load, sharded exact."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import common
from retformer_jax.kb import index as index_lib, layout, store as store_lib

N, D, K = 6000, 64, 32


def clustered(n, seed, d=D, latent=16, clusters=60):
  """Unit vectors around cluster centres in a low-dim latent space (like CLIP embeddings)."""
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((clusters, latent))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  basis = np.linalg.qr(rng.standard_normal((d, latent)))[0].T
  rng = np.random.default_rng(seed)
  z = centres[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, latent)) / 4
  x = z @ basis + 0.05 * rng.standard_normal((n, d)) / np.sqrt(d)
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
  x, q = clustered(N, 1), clustered(300, 2)
  s = q @ x.T
  truth = np.argsort(-s, axis=1, kind="stable")[:, :K]
  return x, q, truth


def recall(ids, truth):
  return np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(ids, truth)])


def _cfg(backend, **kw):
  c = common.get_config().index[backend].copy_and_resolve_references()
  for key, v in kw.items():
    c[key] = v
  return c


@pytest.mark.parametrize("backend,kw,rerank", [
    ("faiss", {}, 0),  # default HNSW32,Flat
    ("faiss", {"factory": "IVF64,PQ16x4fs", "nprobe": 16, "train_size": N}, 128),
    ("faiss", {"factory": "IVF{nlist},PQ16x4fs", "nprobe": 16, "train_size": N}, 128),
    ("scann", {"num_leaves": 80, "num_leaves_to_search": 12, "reorder_k": 128}, 0),
    ("scann", {"num_leaves": 80, "num_leaves_to_search": 12, "reorder_k": 0}, 128),
    ("exact", {}, 0),
    ("exact", {"approx": True, "recall_target": 0.99}, 0),
])
def test_backend_recall_and_roundtrip(backend, kw, rerank, data, tmp_path):
  x, q, truth = data
  cls = index_lib.backend_class(backend)
  cfg = _cfg(backend, **kw)
  index = cls(D, cfg)
  index.build(x, seed=0)
  assert index.ntotal == N

  def search(ix):
    if rerank:
      _, cand = ix.search(q, rerank)
      s, i = index_lib.rescore(q, cand, x.astype(np.float16))
      return index_lib.merge_topk(s, i, K)
    return ix.search(q, K)

  sims, ids = search(index)
  r = recall(ids, truth)
  assert r >= 0.95, f"{backend} {kw}: recall@32 {r:.3f}"
  # Similarities are inner products of the returned rows, best first.
  np.testing.assert_allclose(sims, np.einsum("mkd,md->mk", x[ids], q), atol=2e-2 if rerank
                             else 5e-3)
  assert np.all(np.diff(sims, axis=1) <= 1e-6)
  index.save(str(tmp_path))
  loaded = cls.load(str(tmp_path), D, cfg, vectors=x)
  _, ids2 = search(loaded)
  np.testing.assert_array_equal(ids, ids2)


def test_exact_is_exact_and_pads_small_kb(data):
  x, q, truth = data
  index = index_lib.backend_class("exact")(D, _cfg("exact", query_batch=128))
  index.build(x[:5000])
  index.add(x[5000:])
  _, ids = index.search(q, K)
  np.testing.assert_array_equal(ids, truth)
  small = index_lib.backend_class("exact")(D, _cfg("exact"))
  small.build(x[:10])
  sims, ids = small.search(q[:3], 16)
  assert (ids[:, 10:] == -1).all() and np.isneginf(sims[:, 10:]).all()
  assert sorted(ids[0, :10]) == list(range(10))


def test_merge_topk_orders_ties_by_row():
  sims = np.array([[0.5, 0.9, 0.5, -np.inf, 0.9]], np.float32)
  rows = np.array([[7, 3, 2, -1, 1]])
  s, r = index_lib.merge_topk(sims, rows, 4)
  np.testing.assert_array_equal(r, [[1, 3, 2, 7]])
  np.testing.assert_allclose(s, [[0.9, 0.9, 0.5, 0.5]])


def test_bad_backend_and_factory_are_clear_errors():
  with pytest.raises(ValueError, match="faiss.*scann.*exact"):
    index_lib.backend_class("annoy")
  with pytest.raises(ValueError, match="index_factory"):
    index_lib.backend_class("faiss")(D, _cfg("faiss", factory="NotAnIndex"))


def test_exact_shards_over_devices_local_topk_then_merge(tmp_path):
  """4 fake devices: each holds a quarter of the KB; results equal numpy brute force."""
  script = textwrap.dedent("""
      import numpy as np, jax
      from configs import common
      from retformer_jax.kb import index as index_lib
      assert jax.local_device_count() == 4
      rng = np.random.default_rng(0)
      x = rng.standard_normal((1001, 32)).astype(np.float32)
      q = rng.standard_normal((37, 32)).astype(np.float32)
      cfg = common.get_config().index.exact
      ix = index_lib.backend_class("exact")(32, cfg)
      ix.build(x)
      assert len(ix._x.sharding.device_set) == 4
      sims, ids = ix.search(q, 40)
      s = q @ x.T
      want = np.argsort(-s, axis=1, kind="stable")[:, :40]
      np.testing.assert_array_equal(ids, want)
      np.testing.assert_allclose(sims, np.take_along_axis(s, want, 1), rtol=1e-5, atol=1e-5)
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_rescore_equals_numpy_dot_products_of_the_candidates():
  rng = np.random.default_rng(3)
  vectors = rng.standard_normal((500, D)).astype(np.float16)
  q = rng.standard_normal((250, D)).astype(np.float32)  # batches of 102, the last one padded
  ids = rng.integers(0, 500, size=(250, 20))
  ids[5, 3:] = -1  # a query with few candidates
  sims, got = index_lib.rescore(q, ids, vectors)
  want = np.einsum("mcd,md->mc", vectors[np.maximum(ids, 0)].astype(np.float32), q)
  np.testing.assert_array_equal(got, ids)
  np.testing.assert_allclose(sims[ids >= 0], want[ids >= 0], rtol=1e-5, atol=1e-5)
  assert np.isneginf(sims[ids < 0]).all()


def _write_store(workdir, name, image, shard_size=2000):
  folder = layout.store_dir(workdir, name)
  n = len(image)
  for s in range(-(-n // shard_size)):
    lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
    store_lib.write_shard(folder, s, store_lib.ShardData(
        image=store_lib.normalise_fp16(image[lo:hi]), text=store_lib.normalise_fp16(image[lo:hi]),
        ids=np.arange(lo, hi), labels=np.zeros(hi - lo, np.int64),
        source_index=np.arange(lo, hi), captions=[""] * (hi - lo), skipped=[]))
  store_lib.finalize(folder, num_items=n, shard_size=shard_size, dim=image.shape[1],
                     meta={"source": name, "kind": "labelled",
                           "encoder": {"id": "clip-a", "weights_sha256": "a" * 64},
                           "fingerprint": layout.fingerprint([name, n])})


def test_ivfpq_codes_rescored_from_the_store_as_the_pipeline_configures_it(data, tmp_path):
  """IVF-PQ fast-scan codes in RAM, candidates re-scored from the memory-mapped fp16 store:
  recall against exact search of the stored vectors, and every returned id and similarity is
  what exact re-scoring of the segment's candidates gives."""
  x, q, _ = data
  wd = str(tmp_path)
  _write_store(wd, "demo:train", x)
  c = common.get_config()
  c.kb.sources = ("downstream",)
  c.index.backend = "faiss"
  c.index.segment_size = 4000  # two segments, merged by global row
  c.index.rerank_depth = 96
  c.index.faiss.factory = "IVF{nlist},PQ16x4fs"
  c.index.faiss.nprobe = 16
  index_lib.build(wd, c)
  idx = index_lib.open_index(wd, c)
  assert [s[1].index.nlist for s in idx.segments] == [126, 89]  # 2 x sqrt(4000), 2 x sqrt(2000)
  stored = np.asarray(store_lib.open_stores(wd, c)[0].image)
  assert isinstance(idx.segments[0][2], np.memmap)  # re-scoring reads the store on disk
  sims, rows = idx.search(q, K)
  exact = q @ stored.astype(np.float32).T
  truth = np.argsort(-exact, axis=1, kind="stable")[:, :K]
  assert recall(rows, truth) >= 0.95
  cand = [index.search(q, 96)[1] for _, index, _ in idx.segments]
  cand = np.concatenate([np.where(i >= 0, i + off, -1)
                         for i, (off, _, _) in zip(cand, idx.segments)], 1)
  ref = np.einsum("mcd,md->mc", stored[np.maximum(cand, 0)].astype(np.float32), q)
  want_s, want_r = index_lib.merge_topk(np.where(cand >= 0, ref, -np.inf), cand, K)
  np.testing.assert_array_equal(rows, want_r)
  np.testing.assert_allclose(sims, want_s, rtol=1e-5, atol=1e-5)
