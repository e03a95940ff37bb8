"""The `retllm` stage end to end on the demo: tiny CLIP + tiny Qwen2.5-VL, real scorer."""

from __future__ import annotations

import json
import os
import shutil
import types

import numpy as np
import pytest

from configs import retllm_demo
from retformer_jax.retllm import pipeline
from retformer_jax.stages import retllm as stage


def _config():
  c = retllm_demo.get_config()
  c.retllm.num_images = 10
  c.retllm.num_queries = 4
  c.retllm.top_k = 3
  c.retllm.chunk_size = 3
  return c


@pytest.mark.slow
def test_demo_stage_end_to_end_and_rerun(tmp_path, monkeypatch):
  from retformer_jax.retllm import caption_sets
  from retformer_jax.retllm import scorer as scorer_lib

  built = []
  real_from_folder = scorer_lib.PairScorer.from_folder

  def recording_from_folder(*a, **k):
    built.append(real_from_folder(*a, **k))
    return built[-1]

  monkeypatch.setattr(scorer_lib.PairScorer, "from_folder", recording_from_folder)
  config = _config()
  workdir = str(tmp_path)
  stage.run(config, workdir)
  assert len(built) == 1
  with open(os.path.join(workdir, "retllm", "demo", "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["t2i_queries"] == 4 and metrics["i2t_queries"] == 4
  # Re-ranking moves only the first K entries: R@10 > K is CLIP's.
  assert metrics["t2i_r10"] == metrics["clip_t2i_r10"]

  # Stored scores are the scorer's own for each (query, candidate) in CLIP order.
  score_dir = metrics["scores"]
  first_i2t = sorted(os.listdir(os.path.join(score_dir, "i2t")))[0]
  with np.load(os.path.join(score_dir, "i2t", first_i2t)) as z:
    q, cand, p, e = z["queries"][0], z["candidates"][0], z["p_true"][0], z["entropy"][0]
  data = caption_sets.load(config.retllm, config.data.demo)
  direct = built[0].score_image_to_text(data.image(int(q)), [data.captions[int(i)] for i in cand])
  np.testing.assert_allclose(p, direct.p_true, atol=1e-6)
  np.testing.assert_allclose(e, direct.entropy, rtol=1e-5, atol=1e-5)
  with np.load(os.path.join(score_dir, "ranked.npz")) as z:
    np.testing.assert_array_equal(z["i2t_clip"][0, :3], cand)
    ranked = dict(z)
  # Every reported recall, recomputed here from the stored scores: the first K of CLIP's list
  # ordered by (score desc, entropy asc, CLIP rank asc), the rest in CLIP order.
  for d in ("t2i", "i2t"):
    chunks = sorted(os.listdir(os.path.join(score_dir, d)))
    scored = [dict(np.load(os.path.join(score_dir, d, f))) for f in chunks]
    held = np.concatenate([c["queries"] for c in scored])  # t2i: pair ids q * 3 + slot
    back = np.argsort(held)  # the files' rows in query (t2i: pair id) order
    p = np.concatenate([c["p_true"] for c in scored])[back].reshape(-1, 3)
    e = np.concatenate([c["entropy"] for c in scored])[back].reshape(-1, 3)
    queries = held[back] if d == "i2t" else held[back][::3] // 3
    np.testing.assert_array_equal(queries, ranked[f"{d}_queries"])
    clip = ranked[f"{d}_clip"]
    for q in range(len(queries)):
      head = sorted(range(3), key=lambda c: (-p[q, c], e[q, c], c))
      np.testing.assert_array_equal(ranked[d][q], np.r_[clip[q, head], clip[q, 3:]])
    for prefix, lists in (("", ranked[d]), ("clip_", clip)):
      if d == "t2i":
        hit = lists == data.caption_image[queries][:, None]
      else:
        hit = data.caption_image[lists] == queries[:, None]
      for k in (1, 5, 10):
        assert metrics[f"{prefix}{d}_r{k}"] == pytest.approx(100 * hit[:, :k].any(1).mean())

  # A rerun with the same inputs never builds the scorer and gives the same metrics.
  def no_scorer(*a, **k):
    raise AssertionError("scorer built on a finished run")

  monkeypatch.setattr(scorer_lib.PairScorer, "from_folder", no_scorer)
  stage.run(config, workdir)
  with open(os.path.join(workdir, "retllm", "demo", "metrics.json")) as f:
    assert json.load(f) == metrics


class PreferringScorer:
  """Stands in for the MLLM: P(True) = 0.9 for the pairs `match(image, caption)` picks (ids
  looked up in the gallery), 0.3 otherwise; batched like the real scorer."""

  def __init__(self, data, match):
    self.image_id = {data.image(i).tobytes(): i for i in range(data.num_images)}
    self.caption_id = {c: i for i, c in enumerate(data.captions)}
    assert len(self.image_id) == data.num_images and len(self.caption_id) == data.num_captions
    self.match, self.pairs = match, 0

  def score_pairs(self, images, captions, pairs):
    self.pairs += len(pairs)
    hits = [self.match(self.image_id[images[i].tobytes()], self.caption_id[captions[j]])
            for i, j in pairs]
    return types.SimpleNamespace(p_true=np.where(hits, 0.9, 0.3),
                                 entropy=np.full(len(pairs), 0.5))

  def score_text_to_image(self, caption, images):
    raise AssertionError("the stage scores whole chunks through score_pairs")

  score_image_to_text = score_text_to_image


def test_stage_with_a_scorer_that_prefers_the_true_pair_has_recall_100(tmp_path, monkeypatch):
  from retformer_jax.retllm import caption_sets
  from retformer_jax.retllm import scorer as scorer_lib

  config = _config()
  config.retllm.num_images = 8  # 8 distinct captions (images 8, 9 share one)
  config.retllm.num_queries = 0
  config.retllm.top_k = 8  # the whole gallery is re-scored
  workdir = str(tmp_path)
  # The MLLM is replaced: no need to build the tiny Qwen2.5-VL folder.
  os.makedirs(tmp_path / "no_mllm")
  monkeypatch.setattr(stage, "qwen_folder", lambda config, workdir: str(tmp_path / "no_mllm"))
  data = caption_sets.load(config.retllm, config.data.demo)
  gold = data.caption_image
  for name, match in (("true", lambda i, c: gold[c] == i),
                      ("wrong", lambda i, c: gold[c] == (i + 1) % 8)):
    fake = PreferringScorer(data, match)
    monkeypatch.setattr(scorer_lib.PairScorer, "from_folder", lambda *a, fake=fake, **k: fake)
    shutil.rmtree(os.path.join(workdir, "retllm", "demo", "scores"), ignore_errors=True)
    stage.run(config, workdir)
    with open(os.path.join(workdir, "retllm", "demo", "metrics.json")) as f:
      metrics = json.load(f)
    assert fake.pairs == 2 * 8 * 8
    assert metrics["t2i_queries"] == metrics["i2t_queries"] == 8
    if name == "true":
      assert metrics["t2i_r1"] == metrics["i2t_r1"] == 100.0
      assert min(metrics["clip_t2i_r1"], metrics["clip_i2t_r1"]) < 100.0  # random demo CLIP
    else:
      assert metrics["t2i_r1"] == metrics["i2t_r1"] == 0.0


def test_missing_model_folder_is_a_clear_error(tmp_path):
  config = _config()
  config.retllm.model_path = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="retllm.model_path"):
    stage.qwen_folder(config, str(tmp_path))


def test_unknown_dataset_is_a_clear_error():
  from retformer_jax.retllm import caption_sets

  config = _config()
  config.retllm.dataset = "flickr8k"
  with pytest.raises(caption_sets.CaptionSetError, match="coco_tfds"):
    caption_sets.load(config.retllm, config.data.demo)


def test_real_configs_parse():
  from configs import retllm_coco, retllm_flickr30k

  for mod, name in ((retllm_flickr30k, "flickr30k"), (retllm_coco, "coco")):
    c = mod.get_config()
    assert c.stages == ("retllm",) and c.retllm.dataset == name and c.retllm.top_k == 5
    assert c.retllm.min_pixels == 256 * 28 * 28 and c.retllm.max_pixels == 512 * 28 * 28
    assert mod.get_config("runlocal").retllm.num_queries > 0
  assert pipeline.RECALL_KS == (1, 5, 10)
