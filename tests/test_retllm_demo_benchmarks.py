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
from retformer_jax.retllm.benchmarks import mmeb
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


@pytest.mark.parametrize("name", NAMES)
def test_demo_benchmark_through_main(monkeypatch, capsys, workdir, name):
  metrics = _run(monkeypatch, capsys, workdir, name)
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
    subsets = list(retllm_sets.MMEB_SUBSETS)
    keys = [f"hit1_{s}" for s in subsets] + [f"hit1_{t}" for t in mmeb.META_TASKS] + [
        "hit1_mean"]
    _in_range(metrics, keys + [f"clip_{k}" for k in keys])
    assert metrics["hit1_retrieval"] == pytest.approx(
        (metrics["hit1_MSCOCO_t2i"] + metrics["hit1_MSCOCO_i2t"]) / 2)
    assert metrics["subsets"] == subsets
  else:
    _in_range(metrics, ["top1", "clip_top1"])
    assert "many" not in metrics  # the list layout has no training counts


def test_flickr30k_pointwise_scores_are_the_scorers_own(monkeypatch, capsys, workdir):
  """The stored Karpathy-layout scores equal PairScorer.score_pairs on the same pairs in the
  match prompt, as the caption pipeline computed them before the benchmark families."""
  from retformer_jax.retllm import scorer as scorer_lib
  from retformer_jax.stages import retllm as stage
  from configs import retllm_demo

  metrics = _run(monkeypatch, capsys, workdir, "flickr30k")
  data = benchmarks.load("flickr30k", os.path.join(workdir, "retllm_data", "flickr30k"))
  config = retllm_demo.get_config()
  config.retllm.top_k = 3
  fresh = scorer_lib.PairScorer.from_folder(os.path.join(workdir, "demo_qwen"),
                                            **stage.scorer_kwargs(config.retllm))
  checked = 0
  for direction in ("t2i", "i2t"):
    folder = os.path.join(metrics["scores"], direction)
    for name in sorted(os.listdir(folder)):
      with np.load(os.path.join(folder, name)) as z:
        queries, cands, p, e = z["queries"], z["candidates"], z["p_true"], z["entropy"]
      for row, q in enumerate(queries):
        if direction == "t2i":
          res = fresh.score_text_to_image(data.captions[q], [data.image(i) for i in cands[row]])
        else:
          res = fresh.score_image_to_text(data.image(q), [data.captions[i] for i in cands[row]])
        np.testing.assert_allclose(p[row], res.p_true, atol=1e-6)
        np.testing.assert_allclose(e[row], res.entropy, rtol=1e-5, atol=1e-5)
        checked += 1
  assert checked == 8


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
                                     f"--config.retllm.data_dir={tmp_path / 'nowhere'}")
  assert code != 0
  line = [x for x in err.splitlines() if "Urban1k" in x]
  assert line and "image/ and caption/" in line[0], err[-2000:]
