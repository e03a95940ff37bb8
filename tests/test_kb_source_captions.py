"""Web items without a caption are never embedded with an empty text: skipped and listed in the
store manifest (config.embed.missing_caption="skip"), or the embed job stops ("error")."""

import logging
import os

import numpy as np
import pytest

from configs import common
from retformer_jax.kb import embed, layout, source_spec, sources, store
from test_kb_sources import write_wds


class TextRecordingEncoder:
  """Embeds an image as its mean colour and records every text it is given."""

  batch_size = 2
  dim = 4
  info = {"id": "colour-mean", "weights_sha256": ""}
  preprocessor = None

  def __init__(self):
    self.texts = []

  def preprocess_image(self, image):
    return np.asarray(image, np.float32).mean(axis=(0, 1))

  def encode(self, pixels, texts):
    self.texts.extend(texts)
    img = np.stack([np.append(p, 1.0) for p in pixels])
    txt = np.stack([[len(t), 1.0, 0.0, 0.0] for t in texts]).astype(np.float32)
    return img, txt


def web_items(tmp_path):
  """Keys 0..6: 1 has no caption file, 3 an empty KEY.txt, 5 a KEY.json without caption text,
  6 an undecodable image."""
  folder = str(tmp_path / "web")
  captions = {0: "zero", 1: None, 2: "two", 3: "", 4: "four", 5: "", 6: "six"}
  write_wds(folder, [[(f"{k:09d}", (10 * k, 20, 30), c, k == 5) for k, c in captions.items()]],
            corrupt_key=f"{6:09d}")
  return folder


def run(folder, workdir, missing_caption):
  c = common.get_config()
  c.embed.missing_caption = missing_caption
  source = sources.open_source(source_spec.parse_source(f"web=wds:{folder}", c.data), c)
  encoder = TextRecordingEncoder()
  manifest = embed.embed_images(source, layout.store_dir(workdir, "web"), encoder,
                                shard_size=3, num_workers=2, prefetch_batches=2, progress=False)
  return manifest, encoder


def test_missing_captions_are_skipped_and_listed(tmp_path, caplog):
  folder = web_items(tmp_path)
  with caplog.at_level(logging.WARNING, logger=embed.__name__):
    manifest, encoder = run(folder, str(tmp_path / "w"), "skip")
  assert "" not in encoder.texts and sorted(encoder.texts) == ["four", "two", "zero"]
  assert manifest["count"] == 3 and manifest["skipped_count"] == 4
  skipped = {s["index"]: s for s in manifest["skipped"]}
  assert sorted(skipped) == [1, 3, 5, 6]
  assert [skipped[i]["reason"] for i in (1, 3, 5)] == ["missing_caption"] * 3
  assert skipped[6]["reason"] == "unreadable" and "cannot decode image" in skipped[6]["error"]
  assert "000000001: no caption (no KEY.txt or KEY.json)" in skipped[1]["error"]
  assert "000000003: no caption (empty KEY.txt)" in skipped[3]["error"]
  assert "000000005: no caption (no caption in KEY.json)" in skipped[5]["error"]
  web = store.EmbeddingStore(layout.store_dir(str(tmp_path / "w"), "web"))
  np.testing.assert_array_equal(web.ids, [0, 2, 4])
  assert web.captions([0, 1, 2]) == ["zero", "two", "four"]
  summary = [r.getMessage() for r in caplog.records if "items skipped" in r.getMessage()]
  assert summary == [f"web: 4 items skipped: 3 missing_caption, 1 unreadable (listed in "
                     f"{layout.store_dir(str(tmp_path / 'w'), 'web')}/manifest.json)"]


def test_missing_captions_can_stop_the_job(tmp_path):
  folder = web_items(tmp_path)
  with pytest.raises(sources.FatalExampleError, match=r"1 items have no KEY.txt or KEY.json "
                     r"\(first: 00000.tar:000000001\)"):
    run(folder, str(tmp_path / "w"), "error")
  # With a caption file for every item, an empty one still stops the job, naming the item.
  write_wds(folder, [[(f"{k:09d}", (10 * k, 20, 30), c, False)
                      for k, c in enumerate(["zero", "one", "two", "three", " ", "five"])]])
  workdir = str(tmp_path / "w2")
  with pytest.raises(sources.FatalExampleError, match=r"00000.tar:000000004: no caption \(empty "
                     r"KEY.txt\); add one, or set --config.embed.missing_caption=skip"):
    run(folder, workdir, "error")
  # The shard finished before the item is kept; skipping resumes from there.
  assert store.finished_shards(layout.store_dir(workdir, "web")) == {0}
  manifest, encoder = run(folder, workdir, "skip")
  assert encoder.texts == ["three", "five"] and manifest["count"] == 5  # shard 1 redone
  assert [(s["index"], s["reason"]) for s in manifest["skipped"]] == [(4, "missing_caption")]
  assert os.path.exists(os.path.join(layout.store_dir(workdir, "web"), "manifest.json"))
