"""Neighbours: self and duplicate exclusion, determinism, and mismatch errors (synthetic stores)."""

import os

import numpy as np
import pytest

from configs import common
from retformer_jax.kb import api, index as index_lib, layout, neighbors, store

ENC = {"id": "clip-a", "weights_sha256": "a" * 64}
D = 16


def make_store(workdir, name, image, encoder=ENC, shard_size=7, fp=None):
  folder = layout.store_dir(workdir, name)
  n = len(image)
  for s in range(-(-n // shard_size)):
    lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
    store.write_shard(folder, s, store.ShardData(
        image=store.normalise_fp16(image[lo:hi]), text=store.normalise_fp16(image[lo:hi] + 1),
        ids=np.arange(lo, hi) + 1000, labels=np.arange(lo, hi) % 3,
        source_index=np.arange(lo, hi), captions=[f"{name} #{i}" for i in range(lo, hi)],
        skipped=[]))
  return store.finalize(folder, num_items=n, shard_size=shard_size, dim=image.shape[1],
                        meta={"source": name, "kind": "labelled", "encoder": encoder,
                              "fingerprint": fp or layout.fingerprint([name, encoder,
                                                                       image.tolist()])})


def config(backend="exact", sources=("downstream",), k=5):
  c = common.get_config()
  c.kb.sources = sources
  c.index.backend = backend
  c.neighbors.k = k
  c.neighbors.extra_depth = 1  # force the "search deeper" path
  c.neighbors.chunk_size = 8
  c.data.eval_splits = ("test",)
  c.train.eval_split = ""
  return c


@pytest.fixture
def workdir(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.standard_normal((40, D)).astype(np.float32)
  train[5] = train[3]  # exact duplicates of example 3 ...
  train[9] = train[3]
  train[11] = train[3] * 2.0  # ... same direction, bit-identical once normalised
  test = rng.standard_normal((10, D)).astype(np.float32)
  test[0] = train[3]  # a test image equal to a training image is NOT removed
  make_store(str(tmp_path), "demo:train", train)
  make_store(str(tmp_path), "demo:test", test)
  return str(tmp_path), train, test


def run_pipeline(wd, c):
  index_lib.build(wd, c)
  idx, kb = api.open_index(wd, c), api.open_kb(wd, c)
  for split in (c.data.train_split, *c.data.eval_splits):
    neighbors.compute_split(wd, c, split, kb, idx)


@pytest.mark.parametrize("backend", ["exact", "faiss", "scann"])
def test_self_and_duplicates_removed_deterministically(workdir, backend):
  wd, train, _ = workdir
  c = config(backend)
  run_pipeline(wd, c)
  nb = api.load_neighbors(wd, c, "train")
  kb = api.open_kb(wd, c)
  assert nb.rows.shape == (40, 5) and nb.sims.dtype == np.float32
  for i in range(40):
    assert i not in nb.rows[i]
    assert not np.any(np.all(kb.image(nb.rows[i]) == kb.image(i), axis=-1))
  for i in (3, 5, 9, 11):
    assert not set(nb.rows[i]) & {3, 5, 9, 11}
  # The kept neighbours are the best remaining ones, in order, with exact similarities.
  x = kb.image(np.arange(40)).astype(np.float32)
  s = x @ x.T
  for i in (0, 3, 17):
    allowed = [j for j in np.argsort(-s[i], kind="stable")
               if j != i and not np.array_equal(kb.image(j), kb.image(i))]
    np.testing.assert_array_equal(nb.rows[i], allowed[:5])
    np.testing.assert_allclose(nb.sims[i], s[i, allowed[:5]], rtol=1e-5)
  # The test split is not in the KB: its duplicate of example 3 stays first.
  nt = api.load_neighbors(wd, c, "test")
  assert nt.rows[0, 0] in (3, 5, 9, 11) and nt.sims[0, 0] > 0.999
  # Deterministic: recomputing from scratch gives identical files.
  first = nb.rows.copy(), nb.sims.copy()
  for split in ("train", "test"):
    os.remove(os.path.join(layout.neighbors_dir(wd, c.kb.name, split), "manifest.json"))
  run_pipeline(wd, c)
  again = api.load_neighbors(wd, c, "train")
  np.testing.assert_array_equal(first[0], again.rows)
  np.testing.assert_array_equal(first[1], again.sims)


def brute_force(queries, kb_vectors, k, own_rows=None):
  """Top-k KB rows by inner product (float32 of the stored fp16), best first, ties by row;
  also whether the k-th similarity is tied with the next allowed row.

  With own_rows (the KB holds the queries), a query's own row and every row whose vector is
  bit-identical to the query's are dropped.
  """
  s = queries.astype(np.float32) @ kb_vectors.astype(np.float32).T
  rows = np.zeros((len(queries), k), np.int64)
  tied = np.zeros(len(queries), bool)
  for i in range(len(queries)):
    allowed = [j for j in range(len(kb_vectors))
               if own_rows is None or (j != own_rows[i]
                                       and not np.array_equal(kb_vectors[j], queries[i]))]
    order = sorted(allowed, key=lambda j: (-s[i, j], j))
    rows[i] = order[:k]
    tied[i] = len(order) > k and s[i, order[k - 1]] == s[i, order[k]]
  return rows, np.take_along_axis(s, rows, 1), tied, s


def check_against_brute_force(nb, queries, kb_vectors, own_rows=None, k=5):
  """Every query's neighbours are its true k nearest, best first with exact similarities.
  Where the k-th place is tied, any of the tied rows is a true nearest; elsewhere the rows
  are exactly the brute-force ones."""
  want_rows, want_sims, tied, s = brute_force(queries, kb_vectors, k, own_rows)
  np.testing.assert_allclose(nb.sims, want_sims, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(nb.rows[~tied], want_rows[~tied])
  for i in np.nonzero(tied)[0]:
    assert len(set(nb.rows[i])) == k
    np.testing.assert_allclose(s[i, nb.rows[i]], want_sims[i], rtol=1e-5, atol=1e-6)
    if own_rows is not None:
      assert own_rows[i] not in nb.rows[i]
      assert not np.all(kb_vectors[nb.rows[i]] == queries[i], axis=-1).any()
  return want_rows, tied


EXACT_BACKENDS = [("exact", ""), ("faiss", "Flat")]


@pytest.mark.parametrize("backend,factory", EXACT_BACKENDS)
def test_neighbours_are_the_brute_force_nearest(workdir, backend, factory):
  """Exact backends: every query's neighbours are its true nearest, computed here in NumPy from
  the vectors the test wrote (not through the KB or index code)."""
  wd, train, test = workdir
  c = config(backend)
  c.index.faiss.factory = factory
  run_pipeline(wd, c)
  x = store.normalise_fp16(train)
  want_rows, tied = check_against_brute_force(api.load_neighbors(wd, c, "train"), x, x,
                                              own_rows=np.arange(40))
  assert (~tied).sum() >= 30  # most queries are compared row for row
  # Rows 3, 5, 9, 11 hold one vector: none is a neighbour of another (their search went
  # deeper than k + extra_depth).
  assert not set(want_rows[[3, 5, 9, 11]].ravel()) & {3, 5, 9, 11}
  # A split the KB does not hold: nothing removed, its copy of row 3 and the duplicates first.
  nt = api.load_neighbors(wd, c, "test")
  check_against_brute_force(nt, store.normalise_fp16(test), x)
  np.testing.assert_array_equal(nt.rows[0, :4], [3, 5, 9, 11])


@pytest.mark.parametrize("backend,factory", [("exact", ""), ("faiss", "Flat")])
def test_ties_at_the_kth_place_go_to_the_lower_row(workdir, backend, factory):
  """The neighbours stage promises the same result whichever backend found the candidates;
  rows 3, 5, 9, 11 are one vector, so some queries have a tie at the k-th place."""
  wd, train, _ = workdir
  c = config(backend)
  c.index.faiss.factory = factory
  run_pipeline(wd, c)
  x = store.normalise_fp16(train)
  want_rows, _, tied, _ = brute_force(x, x, 5, own_rows=np.arange(40))
  assert tied.any()
  np.testing.assert_array_equal(api.load_neighbors(wd, c, "train").rows, want_rows)


def test_kb_gathers_rows_of_any_shape_across_sources(workdir, tmp_path):
  wd, train, test = workdir
  c = config(sources=("downstream", "demo:test"))
  kb = api.open_kb(wd, c)
  assert kb.size == 50 and kb.dim == D
  rows = np.array([[0, 45], [39, 40]])
  img = kb.image(rows)
  assert img.shape == (2, 2, D) and img.dtype == np.float16
  np.testing.assert_array_equal(img[0, 1], store.normalise_fp16(test[5:6])[0])
  np.testing.assert_array_equal(kb.labels(rows), [[0, 5 % 3], [39 % 3, 0]])
  assert kb.captions(rows.reshape(-1)) == ["demo:train #0", "demo:test #5", "demo:train #39",
                                            "demo:test #0"]
  st = api.open_query_store(wd, c, "test")
  assert st.image.shape == (10, D) and st.ids[0] == 1000 and st.captions([2]) == ["demo:test #2"]
  with pytest.raises(IndexError, match="KB rows"):
    kb.image([50])


def test_mismatches_are_clear_errors(workdir):
  wd, train, _ = workdir
  c = config("faiss", sources=("downstream", "demo:other"))
  make_store(wd, "demo:other", train[:8] + 0.1, encoder={"id": "clip-b", "weights_sha256": "b"})
  with pytest.raises(store.StoreMismatchError, match="encoder 'clip-a'.*'clip-b'"):
    api.open_kb(wd, c)
  c = config("faiss")
  run_pipeline(wd, c)
  # Same encoder id but other weights: the query store no longer matches the KB.
  st_dir = layout.store_dir(wd, "demo:test")
  man = store.read_manifest(st_dir)
  man["encoder"] = {"id": "clip-a", "weights_sha256": "c" * 64}
  layout.write_json(os.path.join(st_dir, "manifest.json"), man)
  with pytest.raises(store.StoreMismatchError, match="weights"):
    neighbors.compute_split(wd, c, "test", api.open_kb(wd, c), api.open_index(wd, c))
  # The training store is re-embedded (new fingerprint): index and neighbours are stale.
  import shutil

  shutil.rmtree(layout.store_dir(wd, "demo:train"))
  make_store(wd, "demo:train", train * -1.0)
  with pytest.raises(index_lib.IndexMismatchError, match="rerun the index stage"):
    api.open_index(wd, c)
  with pytest.raises(neighbors.NeighborsError, match="rerun the neighbors stage"):
    api.load_neighbors(wd, c, "train")
  assert not index_lib.is_current(wd, c)
  c2 = config("faiss", k=7)
  with pytest.raises(neighbors.NeighborsError, match="No neighbours|k=5"):
    api.load_neighbors(wd, c2, "test")


def test_k_larger_than_kb_is_a_clear_error(workdir):
  wd, _, _ = workdir
  c = config("exact", k=40)
  index_lib.build(wd, c)
  with pytest.raises(neighbors.NeighborsError, match="neighbors.k=40"):
    neighbors.compute_split(wd, c, "train", api.open_kb(wd, c), api.open_index(wd, c))


def test_store_without_manifest_is_unfinished(tmp_path):
  with pytest.raises(store.StoreError, match="run the embed stage"):
    store.EmbeddingStore(str(tmp_path / "nothing"))


def test_segmented_index_gives_the_same_neighbours(workdir, tmp_path):
  wd, _, _ = workdir
  c = config("exact")
  run_pipeline(wd, c)
  whole = api.load_neighbors(wd, c, "train")
  c.kb.name = "segmented"
  c.index.segment_size = 16  # 40 training rows -> segments [0,16) [16,32) [32,40)
  run_pipeline(wd, c)
  manifest = index_lib.read_manifest(wd, c)
  assert [s["rows"] for s in manifest["segments"]] == [[0, 16], [16, 32], [32, 40]]
  assert [s["offset"] for s in manifest["segments"]] == [0, 16, 32]
  parts = api.load_neighbors(wd, c, "train")
  np.testing.assert_array_equal(whole.rows, parts.rows)
  np.testing.assert_array_equal(whole.sims, parts.sims)
  assert index_lib.is_current(wd, c)
  c.index.exact.query_batch = 64  # a search-time setting: same index, neighbours to redo
  assert index_lib.is_current(wd, c)
  with pytest.raises(neighbors.NeighborsError, match="rerun the neighbors stage"):
    api.load_neighbors(wd, c, "train")
  c.index.segment_size = 20  # a build-time setting: the index is stale
  assert not index_lib.is_current(wd, c)


def test_store_joins_shards_including_an_all_skipped_one(tmp_path):
  folder = str(tmp_path / "s")
  rng = np.random.default_rng(1)
  vec = rng.standard_normal((5, D)).astype(np.float32)

  def shard(rows, skipped):
    rows = np.asarray(rows, np.int64)
    return store.ShardData(
        image=store.normalise_fp16(vec[rows] if len(rows) else np.zeros((0, 0))),
        text=store.normalise_fp16(vec[rows] if len(rows) else np.zeros((0, 0))),
        ids=rows, labels=rows, source_index=rows, captions=[f"c{r}" for r in rows],
        skipped=[{"index": i, "error": "bad"} for i in skipped])

  store.write_shard(folder, 0, shard([0, 1], []))
  store.write_shard(folder, 1, shard([], [2, 3]))
  store.write_shard(folder, 2, shard([4], []))
  with pytest.raises(store.StoreError, match="missing"):
    store.finalize(folder, num_items=8, shard_size=2, dim=D, meta={"source": "s"})
  m = store.finalize(folder, num_items=5, shard_size=2, dim=D,
                     meta={"source": "s", "fingerprint": "f", "encoder": ENC})
  assert m["count"] == 3 and m["skipped_count"] == 2 and [s["rows"] for s in m["shards"]] == [
      2, 0, 1]
  st = store.EmbeddingStore(folder)
  np.testing.assert_array_equal(st.source_index, [0, 1, 4])
  np.testing.assert_array_equal(st.image, store.normalise_fp16(vec[[0, 1, 4]]))
  assert st.captions([0, 1, 2]) == ["c0", "c1", "c4"]
  assert not os.path.exists(os.path.join(folder, "shards"))
