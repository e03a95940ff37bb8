"""The pipeline with a SigLIP folder as config.clip.path: the zero-shot and embed stages end to
end on the demo set, the RetLLM coarse lists, and stores of CLIP and SigLIP never mixed."""

import json
import os
import types

import numpy as np
import pytest

from configs import demo as demo_config
from retformer_jax.convert import hf
from retformer_jax.data.siglip_preprocess import SiglipPreprocessor
from retformer_jax.demo import dataset as demo
from retformer_jax.kb import api, encoder as encoder_lib, store
from retformer_jax.retllm import coarse
from retformer_jax.stages import embed, zeroshot
from tiny_siglip import save_hf_siglip


def small_config(clip_path=""):
  c = demo_config.get_config()
  c.data.demo.num_classes = 4
  c.data.demo.max_per_class = 12
  c.data.demo.imbalance = 3.0
  c.data.demo.test_per_class = 3
  c.data.demo.val_per_class = 1
  c.clip.batch_size = 8
  c.clip.path = clip_path
  c.embed.shard_size = 16
  c.embed.progress = False
  c.eval.many_above = 8
  c.eval.few_below = 5
  return c


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("tiny_siglip"))
  spec = demo.DemoSpec.from_config(small_config().data.demo)
  save_hf_siglip(folder, corpus=demo.corpus(spec), image_size=32, patch_size=8, max_pos=16,
                 layers=1)
  return folder


def test_zeroshot_and_embed_stages_run_with_siglip(siglip_folder, tmp_path, capsys):
  wd = str(tmp_path)
  c = small_config(siglip_folder)
  zeroshot.run(c, wd)
  assert "SigLIP zero-shot, demo:test (12 examples)" in capsys.readouterr().out
  with open(os.path.join(wd, "zeroshot", "test", "metrics.json")) as f:
    assert json.load(f)["num_examples"] == 12

  embed.run(c, wd)
  train = api.open_query_store(wd, c, "train")
  assert train.manifest["encoder_family"] == "siglip" and train.encoder_family == "siglip"
  assert train.manifest["encoder"]["id"] == os.path.basename(siglip_folder)
  assert train.image.shape[1] == 48
  np.testing.assert_allclose(np.linalg.norm(train.text.astype(np.float32), axis=1), 1, atol=2e-3)

  # The stored vectors are the model's features of the preprocessed inputs, texts padded to
  # the tower's 16 positions with no mask.
  enc = encoder_lib.load_encoder(c, wd)
  assert enc.family == "siglip" and enc.max_text_length == 16
  ds = demo.load(c.data.demo).splits["train"]
  ex = [ds[i] for i in range(3)]
  _, sg, params = hf.load_image_text_encoder(siglip_folder)
  pre = SiglipPreprocessor.from_folder(siglip_folder)
  ids, _ = pre.texts([e["text"] for e in ex])
  img = sg.apply({"params": params}, pre.images([e["image"] for e in ex]),
                 method=sg.encode_image)
  txt = sg.apply({"params": params}, ids, method=sg.encode_text)
  unit = lambda x: np.asarray(x) / np.linalg.norm(np.asarray(x), axis=1, keepdims=True)  # noqa
  rows = [int(np.flatnonzero(train.source_index == i)[0]) for i in range(3)]
  np.testing.assert_allclose(train.image[rows].astype(np.float32), unit(img), atol=2e-3)
  np.testing.assert_allclose(train.text[rows].astype(np.float32), unit(txt), atol=2e-3)


def test_retllm_coarse_lists_with_siglip(siglip_folder, tmp_path):
  c = small_config(siglip_folder)
  enc = coarse.ClipEncoder(encoder_lib.load_encoder(c, str(tmp_path)), "float32")
  assert enc.identity.startswith("siglip:")
  ds = demo.load(c.data.demo).splits["test"]
  images = [ds[i]["image"] for i in range(6)]
  captions = [ds[i]["text"] for i in range(6)]

  gallery = types.SimpleNamespace(name="demo-test", num_images=6, captions=tuple(captions),
                                  image=lambda i: images[i])
  img, txt = coarse.embed(enc, gallery, str(tmp_path / "cache"), batch_size=4)
  assert img.shape == txt.shape == (6, 48)
  lists = coarse.candidates(img, txt, 3)
  sims = txt @ img.T
  np.testing.assert_array_equal(lists.t2i[:, 0], np.argmax(sims, axis=1))
  np.testing.assert_array_equal(lists.i2t[:, 0], np.argmax(sims.T, axis=1))


def test_a_clip_store_is_never_reused_with_siglip(siglip_folder, tmp_path):
  wd = str(tmp_path)
  c = small_config()
  embed.run(c, wd)  # the demo CLIP
  assert api.open_query_store(wd, c, "test").encoder_family == "clip"
  with pytest.raises(store.StoreMismatchError) as e:
    embed.run(small_config(siglip_folder), wd)
  msg = str(e.value)
  assert "\n" not in msg and "CLIP" in msg and "SigLIP" in msg and "delete" in msg
  with pytest.raises(store.StoreMismatchError, match="CLIP vectors .* is SigLIP"):
    zeroshot.run(small_config(siglip_folder), wd)
