"""Prediction for single images: `Classifier.from_workdir(DIR).predict(images)` and
`python -m retformer_jax.predict --workdir=DIR IMAGE...` on a demo workdir trained through main.
They agree with the eval stage, search neighbours as the neighbors stage does for a split the KB
does not hold, and work on one CPU for a run trained on another mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import main_in_process
from retformer_jax.data import registry
from retformer_jax.kb import api

DEMO = ("--config=configs/demo.py", "--config.data.demo.num_classes=6",
        "--config.data.demo.max_per_class=20", "--config.data.demo.test_per_class=3",
        "--config.data.demo.val_per_class=1", "--config.train.epochs=3",
        "--config.train.batch_size=16", "--config.neighbors.k=6", "--config.embed.progress=False",
        "--config.stages=('embed','index','neighbors','train','eval')")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("demo")
  mp = pytest.MonkeyPatch()
  capsys = _Capture()
  try:
    code, _, err = main_in_process.run(mp, capsys, *DEMO, f"--workdir={wd}")
  finally:
    mp.undo()
  assert code == 0, err
  return str(wd)


class _Capture:
  """capsys for a module fixture (pytest's is function-scoped): output is not captured."""

  def readouterr(self):
    return type("Out", (), {"out": "", "err": ""})()


@pytest.fixture(scope="module")
def classifier(workdir):
  from retformer_jax import Classifier

  return Classifier.from_workdir(workdir)


def _test_images(clf):
  store = api.open_query_store(clf.workdir, clf.config, "test")
  split = registry.load(clf.config.data).splits["test"]
  return store, [split[int(i)]["image"] for i in store.source_index]


def test_predictions_agree_with_the_eval_stage(classifier):
  store, images = _test_images(classifier)
  preds = classifier.predict(images)
  evaluated = np.load(os.path.join(classifier.workdir, "eval", "test", "predictions.npy"))
  names = classifier.class_names
  top1 = np.asarray([names.index(p.top_k[0][0]) for p in preds])
  np.testing.assert_array_equal(top1, evaluated[:, 0])
  for p in preds:
    assert len(p.top_k) == 5 and p.probs.shape == (len(names),)
    probs = [prob for _, prob in p.top_k]
    assert probs == sorted(probs, reverse=True)
    assert p.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert probs[0] == pytest.approx(float(p.probs.max()))


def test_neighbours_are_the_neighbors_stage_search_ranked_by_attention(classifier):
  store, images = _test_images(classifier)
  z = np.asarray(store.image[:4], np.float32)
  rows, _ = classifier.neighbors(z)
  stage = api.load_neighbors(classifier.workdir, classifier.config, "test")
  np.testing.assert_array_equal(rows, stage.rows[:4])
  for p, r in zip(classifier.predict(images[:4]), rows):
    assert len(p.neighbors) == 5
    attention = [n.attention for n in p.neighbors]
    assert attention == sorted(attention, reverse=True) and 0 < sum(attention) < 1
    assert {n.row for n in p.neighbors} <= set(r.tolist())
    assert [n.caption for n in p.neighbors] == classifier.kb.captions(
        np.asarray([n.row for n in p.neighbors]))
    assert all(n.label in classifier.class_names for n in p.neighbors)


def _png(tmp_path, image, name="q.png"):
  path = tmp_path / name
  Image.fromarray(image).save(path)
  return str(path)


def test_cli_prints_top5_and_neighbour_captions_and_json(classifier, tmp_path, capsys):
  from retformer_jax import predict

  _, images = _test_images(classifier)
  path = _png(tmp_path, images[0])
  expected = classifier.predict([images[0]])[0]
  assert predict.main([f"--workdir={classifier.workdir}", path, "--json"]) == 0
  got = json.loads(capsys.readouterr().out.strip())
  assert got["image"] == path
  assert [(c["class"], round(c["prob"], 5)) for c in got["top_k"]] == \
      [(c, round(p, 5)) for c, p in expected.top_k]
  assert [n["caption"] for n in got["neighbors"]] == [n.caption for n in expected.neighbors]
  assert predict.main([f"--workdir={classifier.workdir}", path, path]) == 0
  text = capsys.readouterr().out
  assert text.count(path) == 2 and expected.top_k[0][0] in text
  assert expected.neighbors[0].caption in text


def test_cli_mistakes_are_one_line(workdir, tmp_path, capsys):
  from retformer_jax import predict

  assert predict.main([f"--workdir={workdir}", str(tmp_path / "missing.png")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "missing.png" in err and "does not exist" in err
  (tmp_path / "bad.jpg").write_bytes(b"no image")
  assert predict.main([f"--workdir={workdir}", str(tmp_path / "bad.jpg")]) == 2
  assert "bad.jpg" in capsys.readouterr().err
  good = _png(tmp_path, np.zeros((8, 8, 3), np.uint8))
  assert predict.main([f"--workdir={tmp_path}", good]) == 2
  err = capsys.readouterr().err
  assert "config.json" in err and err.count("\n") == 1


def test_importing_the_package_does_not_import_jax():
  code = ("import sys, retformer_jax; assert 'jax' not in sys.modules; "
          "assert 'Classifier' in dir(retformer_jax)")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=main_in_process.REPO)


@pytest.mark.slow
def test_cli_on_one_cpu_after_training_on_a_two_device_mesh(tmp_path):
  """Trained with weights sharded over a (data 1, model 2) mesh, predicted on one device."""
  wd = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  subprocess.run([sys.executable, "-m", "retformer_jax.main", *DEMO, f"--workdir={wd}",
                  "--config.mesh.model=2"], check=True, cwd=main_in_process.REPO, env=env,
                 capture_output=True, timeout=600)
  image = _png(tmp_path, np.full((20, 20, 3), 90, np.uint8))
  env = {k: v for k, v in env.items() if k != "XLA_FLAGS"}
  r = subprocess.run([sys.executable, "-m", "retformer_jax.predict", f"--workdir={wd}", image,
                      "--json"], cwd=main_in_process.REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  got = json.loads(r.stdout)
  assert len(got["top_k"]) == 5 and len(got["neighbors"]) == 5
  assert sum(c["prob"] for c in got["top_k"]) <= 1 + 1e-6
