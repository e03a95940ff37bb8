"""embed -> index -> neighbors on the demo set with the demo CLIP, corrupt images, stage skipping,
and growing the KB (a new source) without touching what exists."""

import os

import numpy as np
import pytest

from configs import demo as demo_config
from retformer_jax.kb import api, layout, store
from retformer_jax.stages import embed, index, neighbors
from test_kb_sources import write_clipret, write_wds


def small_config():
  c = demo_config.get_config()
  c.data.demo.num_classes = 4
  c.data.demo.max_per_class = 24
  c.data.demo.imbalance = 3.0
  c.data.demo.test_per_class = 3
  c.data.demo.val_per_class = 1
  c.clip.batch_size = 8
  c.embed.shard_size = 16
  c.embed.progress = False
  c.neighbors.k = 4
  return c


def mtimes(folder):
  return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in sorted(os.listdir(folder))}


def test_pipeline_corrupt_skip_and_kb_update(tmp_path):
  wd = str(tmp_path / "w")
  wds_dir = str(tmp_path / "web")
  write_wds(wds_dir, [[(f"{i:09d}", (30 * i, 200 - 20 * i, 90), f"web picture {i}", i % 2 == 0)
                       for i in range(6)]], corrupt_key="000000004")
  c = small_config()
  c.kb.sources = ("downstream", f"web=wds:{wds_dir}")
  embed.run(c, wd)
  index.run(c, wd)
  neighbors.run(c, wd)

  train = api.open_query_store(wd, c, "train")
  n_train = len(train.labels)
  assert train.image.shape == (n_train, 64) and train.image.dtype == np.float16
  np.testing.assert_allclose(np.linalg.norm(train.image.astype(np.float32), axis=1), 1, atol=2e-3)
  np.testing.assert_allclose(np.linalg.norm(train.text.astype(np.float32), axis=1), 1, atol=2e-3)
  np.testing.assert_array_equal(train.ids, np.arange(n_train))
  assert train.manifest["encoder"]["id"] == "demo_clip"
  assert len(train.manifest["encoder"]["weights_sha256"]) == 64
  assert train.manifest["shards"][1]["start"] == 16 and not os.path.exists(
      os.path.join(train.path, "shards"))

  web = store.EmbeddingStore(layout.store_dir(wd, "web"))
  assert web.count == 5 and web.manifest["skipped_count"] == 1
  assert "000000004" in web.manifest["skipped"][0]["error"]
  assert web.manifest["skipped"][0]["index"] == 4
  np.testing.assert_array_equal(web.ids, [0, 1, 2, 3, 5])
  assert web.captions([4]) == ["web picture 5"] and (web.labels == -1).all()

  kb = api.open_kb(wd, c)
  assert kb.size == n_train + 5
  nb = api.load_neighbors(wd, c, "train")
  assert nb.rows.shape == (n_train, 4)
  assert not (nb.rows == np.arange(n_train)[:, None]).any()
  test_nb = api.load_neighbors(wd, c, "test")
  assert test_nb.rows.shape[0] == len(api.open_query_store(wd, c, "test").labels)

  # Rerun: nothing changes on disk (every stage sees its inputs unchanged).
  watched = [layout.store_dir(wd, "demo:train"), layout.index_dir(wd, "downstream"),
             layout.neighbors_dir(wd, "downstream", "train")]
  before = [mtimes(f) for f in watched]
  embed.run(c, wd)
  index.run(c, wd)
  neighbors.run(c, wd)
  assert [mtimes(f) for f in watched] == before

  # Grow the KB: precomputed embeddings of the same encoder, imported, not re-embedded.
  emb_dir = str(tmp_path / "laion")
  write_clipret(emb_dir, [7, 5], dim=64, seed=3)
  c2 = small_config()
  c2.kb.sources = ("downstream", f"web=wds:{wds_dir}", f"laion=clipret:{emb_dir}")
  with pytest.raises(ValueError, match="precomputed_encoder"):
    embed.run(c2, wd)
  c2.kb.precomputed_encoder = "other_clip"
  embed.run(c2, wd)
  with pytest.raises(store.StoreMismatchError, match="other_clip"):
    index.run(c2, wd)
  import shutil

  shutil.rmtree(layout.store_dir(wd, "laion"))
  c2.kb.precomputed_encoder = "demo_clip"
  embed.run(c2, wd)
  segs_before = mtimes(layout.index_dir(wd, "downstream"))
  index.run(c2, wd)
  segs_after = mtimes(layout.index_dir(wd, "downstream"))
  new = set(segs_after) - set(segs_before)
  assert len(new) == 1 and next(iter(new)).startswith("seg-laion-")
  for name in segs_before:  # old segments untouched (only the manifest is rewritten)
    if name.startswith("seg-"):
      assert segs_after[name] == segs_before[name]
  with pytest.raises(ValueError, match="rerun the neighbors stage"):
    api.load_neighbors(wd, c2, "train")
  neighbors.run(c2, wd)
  nb2 = api.load_neighbors(wd, c2, "train")
  kb2 = api.open_kb(wd, c2)
  assert kb2.size == n_train + 5 + 12 and nb2.manifest["index_fingerprint"] != nb.manifest[
      "index_fingerprint"]
  assert kb2.captions([n_train + 5 + 8]) == ["cap 1-1"]
