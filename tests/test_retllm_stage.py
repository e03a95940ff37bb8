"""The `retllm` stage end to end on the demo: tiny CLIP + tiny Qwen2.5-VL, real scorer."""

from __future__ import annotations

import json
import os

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
  with open(os.path.join(workdir, "retllm", "metrics.json")) as f:
    metrics = json.load(f)
  keys = [f"{p}{d}_r{k}" for p in ("", "clip_") for d in ("t2i", "i2t") for k in (1, 5, 10)]
  assert all(0.0 <= metrics[k] <= 100.0 for k in keys)
  assert metrics["t2i_queries"] == 4 and metrics["i2t_queries"] == 4
  # Re-ranking moves only the first K entries: R@10 > K is CLIP's.
  assert metrics["t2i_r10"] == metrics["clip_t2i_r10"]

  # Stored scores are the scorer's own for each (query, candidate) in CLIP order.
  score_dir = metrics["scores"]
  with np.load(os.path.join(score_dir, "i2t", "chunk_0000000_0000003.npz")) as z:
    q, cand, p, e = z["queries"][0], z["candidates"][0], z["p_true"][0], z["entropy"][0]
  data = caption_sets.load(config.retllm, config.data.demo)
  direct = built[0].score_image_to_text(data.image(int(q)), [data.captions[int(i)] for i in cand])
  np.testing.assert_allclose(p, direct.p_true, atol=1e-6)
  np.testing.assert_allclose(e, direct.entropy, rtol=1e-5, atol=1e-5)
  with np.load(os.path.join(score_dir, "ranked.npz")) as z:
    np.testing.assert_array_equal(z["i2t_clip"][0, :3], cand)

  # A rerun with the same inputs never builds the scorer and gives the same metrics.
  def no_scorer(*a, **k):
    raise AssertionError("scorer built on a finished run")

  monkeypatch.setattr(scorer_lib.PairScorer, "from_folder", no_scorer)
  stage.run(config, workdir)
  with open(os.path.join(workdir, "retllm", "metrics.json")) as f:
    assert json.load(f) == metrics


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
