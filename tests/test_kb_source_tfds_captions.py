"""TFDS image-caption sets (coco_captions and alike) as KB sources: label -1, text = the first
caption; images without one are skipped and listed, or refused, never embedded with ""."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
import fake_tfds
from retformer_jax.data import image_decode
from retformer_jax.kb import embed, layout, source_spec, sources, store
from test_kb_source_captions import TextRecordingEncoder

SPEC = "tfds:coco_captions/2014:test"
CAPTIONS = [["A man rides a horse. ", "second of 0"], ["a red bus", "second of 1", "third"],
            ["one caption only"], [], ["  ", "a caption after a blank one"], ["the last image"]]
FIRST = {0: "A man rides a horse.", 1: "a red bus", 2: "one caption only", 5: "the last image"}


def config(tmp_path, missing_caption="skip"):
  c = common.get_config()
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.cache_dir = str(tmp_path / "cache")
  c.embed.missing_caption = missing_caption
  return c


@pytest.fixture
def coco(tmp_path):
  fake_tfds.coco_captions(tmp_path / "tfds", CAPTIONS)
  return tmp_path


def record_of(example) -> int:
  """Which fake record an example came from (TFDS stores records in its own order)."""
  found = [i for i in range(len(CAPTIONS)) if np.array_equal(
      example["image"], image_decode.decode_image(fake_tfds.image(i)))]
  assert len(found) == 1
  return found[0]


def positions(src) -> dict[int, int]:
  """Fake record index -> position in the source, read from the split's images."""
  split = src._split
  return {record_of(split[p]): p for p in range(len(split))}


def test_coco_captions_opens_with_the_first_caption_and_no_label(coco):
  c = config(coco)
  spec = source_spec.parse_source(SPEC, c.data)
  src = sources.open_source(spec, c)
  assert src.kind == "tfds" and src.captions and len(src) == len(CAPTIONS)
  where = positions(src)
  assert sorted(where.values()) == list(range(len(CAPTIONS)))
  for i, text in FIRST.items():
    ex = src[where[i]]
    assert ex["text"] == text and ex["label"] == -1 and ex["id"] == where[i]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (6, 7, 3)
    assert record_of(ex) == i
  fp = src.fingerprint()
  assert fp["layout"] == "captions" and fp["caption_rule"] == "first"
  assert fp["caption_field"] == "captions/text" and fp["captions"] == "required"
  assert (fp["kind"], fp["dataset"], fp["version"], fp["split"], fp["count"]) == (
      "tfds", "coco_captions/2014", "1.1.0", "test", len(CAPTIONS))
  assert "class_names_sha256" not in fp and "prompt" not in fp


def test_images_without_a_caption_are_skipped_or_refused(coco):
  src = sources.open_source(source_spec.parse_source(SPEC, config(coco).data), config(coco))
  where = positions(src)
  for i, why in ((3, "the caption list is empty"), (4, "the first caption is blank")):
    with pytest.raises(sources.MissingCaptionError,
                       match=rf"^tfds:coco_captions\+2014:test\[{where[i]}\]: no caption "
                       rf"\({why}\)$") as e:
      src[where[i]]
    assert e.value.reason == "missing_caption"
  strict = sources.open_source(source_spec.parse_source(SPEC, config(coco).data),
                               config(coco, "error"))
  assert strict[where[0]]["text"] == FIRST[0]
  with pytest.raises(sources.FatalExampleError, match=r"no caption \(the caption list is "
                     r"empty\); set --config.embed.missing_caption=skip"):
    strict[where[3]]


def run(tmp_path, missing_caption, workdir="w"):
  c = config(tmp_path, missing_caption)
  source = sources.open_source(source_spec.parse_source(f"coco={SPEC}", c.data), c)
  encoder = TextRecordingEncoder()
  manifest = embed.embed_images(source, layout.store_dir(str(tmp_path / workdir), "coco"),
                                encoder, shard_size=4, num_workers=2, prefetch_batches=2,
                                progress=False)
  return source, manifest, encoder


def test_embed_job_lists_captionless_images_and_never_embeds_empty_text(coco):
  src, manifest, encoder = run(coco, "skip")
  where = positions(src)
  assert "" not in encoder.texts and sorted(encoder.texts) == sorted(FIRST.values())
  assert manifest["count"] == 4 and manifest["skipped_count"] == 2
  assert sorted((s["index"], s["reason"]) for s in manifest["skipped"]) == sorted(
      [(where[3], "missing_caption"), (where[4], "missing_caption")])
  kb = store.EmbeddingStore(layout.store_dir(str(coco / "w"), "coco"))
  assert (kb.labels == -1).all()
  kept = sorted(where[i] for i in FIRST)
  np.testing.assert_array_equal(kb.ids, kept)
  by_position = {p: i for i, p in where.items()}
  assert kb.captions(list(range(4))) == [FIRST[by_position[p]] for p in kept]
  with pytest.raises(sources.FatalExampleError, match="no caption"):
    run(coco, "error", workdir="w2")


def test_other_caption_layouts_and_classification_first(tmp_path):
  img = tfds.features.Image(shape=(None, None, 3))
  layouts = {
      "caption_text": ({"caption": tfds.features.Text()}, "a dog", "caption"),
      "caption_list": ({"captions": tfds.features.Sequence(tfds.features.Text())},
                       ["a cat", "a kitten"], "captions"),
  }
  for name, (features, value, field) in layouts.items():
    fake_tfds.write(tmp_path / "tfds", name, "1.0.0", dict(features, image=img),
                    {"train": [{"image": fake_tfds.image(0), field: value}]})
    c = config(tmp_path)
    src = sources.open_source(source_spec.parse_source(f"tfds:{name}:train", c.data), c)
    ex = src[0]
    first = value if isinstance(value, str) else value[0]
    assert (ex["text"], ex["label"]) == (first, -1)
    assert src.fingerprint()["caption_field"] == field
  # A ClassLabel `label` makes it a classification set even with captions.
  fake_tfds.write(tmp_path / "tfds", "labelled_caps", "1.0.0",
                  {"image": img, "label": tfds.features.ClassLabel(names=["apple_pie"]),
                   "caption": tfds.features.Text()},
                  {"train": [{"image": fake_tfds.image(0), "label": 0, "caption": "ignored"}]})
  c = config(tmp_path)
  src = sources.open_source(source_spec.parse_source("tfds:labelled_caps:train", c.data), c)
  assert not src.captions and (src[0]["label"], src[0]["text"]) == (0, "a photo of a apple pie.")
  assert "layout" not in src.fingerprint()
  # Both `caption` and `captions` holding text: which one is meant would be a guess.
  fake_tfds.write(tmp_path / "tfds", "two_caps", "1.0.0",
                  {"image": img, "caption": tfds.features.Text(),
                   "captions": tfds.features.Sequence(tfds.features.Text())},
                  {"train": [{"image": fake_tfds.image(0), "caption": "x", "captions": ["y"]}]})
  with pytest.raises(sources.SourceLayoutError, match=r"'two_caps': both \['captions', "
                     r"'caption'\] hold captions"):
    sources.open_source(source_spec.parse_source("tfds:two_caps:train", c.data), c)
