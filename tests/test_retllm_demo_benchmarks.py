"""`python -m retformer_jax.main --config=configs/retllm_demo.py --config.retllm.dataset=NAME`
for every benchmark family: the demo set is written in its real layout, read back by the real
reader, scored by the tiny random models, and WORKDIR/retllm/NAME/metrics.json holds the
family's keys. Flickr30k in the Karpathy layout keeps the scorer's own pointwise scores."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import main_in_process
from retformer_jax.retllm import benchmarks
from retformer_jax.demo import retllm_sets

SMALL = ("--config=configs/retllm_demo.py", "--config.retllm.num_images=8",
         "--config.retllm.num_queries=4", "--config.retllm.top_k=3",
         "--config.retllm.chunk_size=3")
RECALL = [f"{p}{d}_r{k}" for p in ("", "clip_") for d in ("t2i", "i2t") for k in (1, 5, 10)]
# flickr30k (Karpathy layout) and mmeb (mixed modalities) in the fast tier, the rest slow.
NAMES = ["flickr30k", "mmeb"] + [pytest.param(n, marks=pytest.mark.slow) for n in (
    "coco", "sharegpt4v", "urban1k", "sugarcrepe", "classification")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """One workdir for all names: the tiny CLIP and Qwen folders are built once."""
  return str(tmp_path_factory.mktemp("retllm_bench"))


def _run(monkeypatch, capsys, workdir, name, *extra):
  code, _, err = main_in_process.run(monkeypatch, capsys, *SMALL, f"--workdir={workdir}",
                                     f"--config.retllm.dataset={name}", *extra)
  assert code == 0, err[-3000:]
  with open(os.path.join(workdir, "retllm", name, "metrics.json")) as f:
    return json.load(f)


def _in_range(metrics, keys):
  for k in keys:
    assert 0.0 <= metrics[k] <= 100.0, k


# MMEB in the fast tier: a VQA subset (image + text query, text candidates) and a grounding one
# (two images per prompt); every meta-task's keys: tests/test_retllm_families.py.
MMEB_FAST = ("OK-VQA", "MSCOCO")


@pytest.mark.parametrize("name", NAMES)
def test_demo_benchmark_through_main(monkeypatch, capsys, workdir, name):
  extra = ["--config.retllm.subsets=" + ",".join(MMEB_FAST)] if name == "mmeb" else []
  metrics = _run(monkeypatch, capsys, workdir, name, *extra)
  folder = os.path.join(workdir, "retllm_data", name)
  assert os.path.isfile(os.path.join(folder, retllm_sets.STAMP))  # the real layout, written
  if name in ("flickr30k", "coco", "sharegpt4v", "urban1k"):
    _in_range(metrics, RECALL)
    assert metrics["dataset"] == name and metrics["t2i_queries"] == 4
    assert metrics["i2t_r10"] == metrics["clip_i2t_r10"]  # only the first K move
  elif name == "sugarcrepe":
    subsets = list(retllm_sets.SUGARCREPE_SUBSETS)
    _in_range(metrics, [f"{p}acc_{s}" for p in ("", "clip_", "pointwise_", "listwise_")
                        for s in subsets + ["mean"]])
    assert metrics["acc_mean"] == metrics["listwise_acc_mean"]  # the reference's scoring
    assert metrics["acc_mean"] == pytest.approx(np.mean([metrics[f"acc_{s}"] for s in subsets]))
  elif name == "mmeb":
    keys = [f"hit1_{s}" for s in MMEB_FAST] + ["hit1_vqa", "hit1_grounding", "hit1_mean"]
    _in_range(metrics, keys + [f"clip_{k}" for k in keys])
    assert metrics["hit1_vqa"] == metrics["hit1_OK-VQA"]
    assert metrics["hit1_mean"] == pytest.approx(
        (metrics["hit1_OK-VQA"] + metrics["hit1_MSCOCO"]) / 2)
    assert metrics["subsets"] == list(MMEB_FAST) and "hit1_retrieval" not in metrics
  else:
    _in_range(metrics, ["top1", "clip_top1"])
    assert "many" not in metrics  # the list layout has no training counts


def test_flickr30k_pointwise_scores_are_the_scorers_own(monkeypatch, capsys, workdir):
  """The stored Karpathy-layout scores are, bit for bit, PairScorer.score_pairs of a fresh
  scorer on each chunk's (image, caption) pairs in the match prompt (text->image chunks hold
  pairs grouped by image, image->text chunks image queries); text->image also equal, up to
  float rounding, to scoring one caption against its images."""
  from retformer_jax.retllm import scorer as scorer_lib
  from retformer_jax.stages import retllm as stage
  from configs import retllm_demo

  metrics = _run(monkeypatch, capsys, workdir, "flickr30k")
  data = benchmarks.load("flickr30k", os.path.join(workdir, "retllm_data", "flickr30k"))
  fresh = scorer_lib.PairScorer.from_folder(os.path.join(workdir, "demo_qwen"),
                                            **stage.scorer_kwargs(retllm_demo.get_config().retllm))
  checked = 0
  for direction in ("t2i", "i2t"):
    folder = os.path.join(metrics["scores"], direction)
    for name in sorted(os.listdir(folder)):
      with np.load(os.path.join(folder, name)) as z:
        queries, cands, p, e = z["queries"], z["candidates"], z["p_true"], z["entropy"]
      if direction == "t2i":  # rows are pairs (image, caption query), grouped by image
        assert (np.diff(cands[:, 0]) >= 0).all()
        images, img_inv = np.unique(cands[:, 0], return_inverse=True)
        caps, cap_inv = np.unique(cands[:, 1], return_inverse=True)
        res = fresh.score_pairs([data.image(i) for i in images], [data.captions[q] for q in caps],
                                list(zip(img_inv.tolist(), cap_inv.tolist())))
        np.testing.assert_array_equal(p, np.float32(res.p_true))
        np.testing.assert_array_equal(e, np.float32(res.entropy))
        # Scored one caption against its images instead: other batches, so equal up to float
        # rounding (the entropy's last bits move with the batch's padding).
        for query in np.unique(cands[:, 1]):
          rows = np.flatnonzero(cands[:, 1] == query)
          alone = fresh.score_pairs([data.image(i) for i in cands[rows, 0]],
                                    [data.captions[query]], [(c, 0) for c in range(len(rows))])
          np.testing.assert_allclose(p[rows], np.float32(alone.p_true), rtol=1e-5, atol=1e-7)
          np.testing.assert_allclose(e[rows], np.float32(alone.entropy), rtol=1e-5, atol=1e-7)
        checked += len(queries)
        continue
      uniq, inv = np.unique(cands, return_inverse=True)
      inv = inv.reshape(cands.shape)
      rows = range(len(queries))
      res = fresh.score_pairs([data.image(q) for q in queries],
                              [data.captions[i] for i in uniq],
                              [(r, int(inv[r, c])) for r in rows for c in range(3)])
      np.testing.assert_array_equal(p, np.float32(res.p_true).reshape(p.shape))
      np.testing.assert_array_equal(e, np.float32(res.entropy).reshape(e.shape))
      checked += 3 * len(queries)
  assert checked == 8 * 3  # 4 caption and 4 image queries, K = 3
  assert fresh.prompter.template.startswith("Does the image match the caption: <{caption}>?")


@pytest.mark.slow
def test_listwise_image_to_text_option(monkeypatch, capsys, workdir):
  """--config.retllm.i2t_scoring=listwise: the named caption first, the rest in CLIP order."""
  metrics = _run(monkeypatch, capsys, workdir, "flickr30k", "--config.retllm.i2t_scoring=listwise")
  _in_range(metrics, RECALL)
  folder = os.path.join(metrics["scores"], "i2t_listwise")
  files = sorted(os.listdir(folder))
  assert files
  with np.load(os.path.join(folder, files[0])) as z:
    assert (z["p_true"].sum(1) == 1).all() and z["probs"].shape == z["p_true"].shape


def test_missing_layout_is_one_line(monkeypatch, capsys, tmp_path):
  code, _, err = main_in_process.run(monkeypatch, capsys, *SMALL, f"--workdir={tmp_path}",
                                     "--config.retllm.dataset=urban1k",
                                     f"--config.retllm.data_dir={tmp_path / 'nowhere'}",
                                     # real data needs real weights: folders are enough here,
                                     # the layout is read before any weights
                                     f"--config.retllm.model_path={tmp_path}",
                                     f"--config.clip.path={tmp_path}")
  assert code != 0
  line = [x for x in err.splitlines() if "Urban1k" in x]
  assert line and "image/ and caption/" in line[0], err[-2000:]


@pytest.mark.parametrize("family,dataset", [
    ("flickr30k", "flickr30k"), ("coco", "coco"), ("sharegpt4v", "sharegpt4v"),
    ("urban1k", "urban1k"), ("sugarcrepe", "sugarcrepe"), ("mmeb", "mmeb"),
    ("classification", "classification")])
def test_real_configs_read_their_data_dir(family, dataset):
  import importlib

  module = importlib.import_module(f"configs.retllm_{family}")
  c = module.get_config()
  assert c.retllm.dataset == dataset and not c.retllm.demo_data and not c.retllm.data_dir
  assert "--config.retllm.data_dir=" in module.__doc__ and c.stages == ("retllm",)
  assert module.get_config("runlocal").retllm.num_queries > 0
  assert c.clip.max_text_length == (248 if family in ("sharegpt4v", "urban1k") else 77)


def test_classification_config_takes_our_labelled_sets():
  from configs import retllm_classification

  c = retllm_classification.get_config("places_lt,runlocal")
  assert c.retllm.class_source == "data" and c.data.name == "places_lt"
  assert c.retllm.num_queries == 8
  with pytest.raises(ValueError, match="use one of"):
    retllm_classification.get_config("flowers")


def test_empty_data_dir_of_a_real_config_is_one_line(monkeypatch, capsys, tmp_path):
  code, _, err = main_in_process.run(
      monkeypatch, capsys, "--config=configs/retllm_sugarcrepe.py", f"--workdir={tmp_path}",
      f"--config.retllm.model_path={tmp_path}", f"--config.clip.path={tmp_path}")
  assert code != 0 and "config.retllm.data_dir is empty" in err
  assert not os.path.exists(tmp_path / "retllm_data")  # no demo set made up for a real run
