"""Image-caption retrieval test sets: Flickr30k and MS-COCO (Karpathy splits), TFDS, the demo.

A `CaptionSet` is a gallery of images (random access, decoded lazily) and a flat list of
captions, each caption tied to its one ground-truth image. Text->image queries are the
captions (gallery = images); image->text queries are the images (gallery = captions), and an
image's ground truth is all of its captions.

Karpathy layout (the standard Flickr30k 1k / COCO 5k test splits):
  karpathy_json   dataset_flickr30k.json | dataset_coco.json
                  {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}
  data_dir        the images: DATA_DIR/FILEPATH/FILENAME (COCO: val2014/COCO_val2014_*.jpg)
                  or DATA_DIR/FILENAME (Flickr30k: the flickr30k-images folder)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from retformer_jax import errors
from retformer_jax.data import image_decode
from retformer_jax.demo import dataset as demo_dataset


class CaptionSetError(errors.UserError, ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class CaptionSet:
  """A retrieval gallery: `num_images` images and captions with their ground-truth image."""

  name: str
  num_images: int
  load_image: Callable[[int], np.ndarray]  # index -> uint8 [H, W, 3]
  captions: Sequence[str]
  caption_image: np.ndarray  # int64 [num_captions]: the image each caption describes

  def __post_init__(self):
    ci = np.asarray(self.caption_image)
    if ci.shape != (len(self.captions),):
      raise CaptionSetError(f"{self.name}: caption_image has shape {ci.shape}, expected "
                            f"({len(self.captions)},).")
    if len(ci) and (ci.min() < 0 or ci.max() >= self.num_images):
      raise CaptionSetError(f"{self.name}: caption_image refers to images outside "
                            f"[0, {self.num_images}).")

  @property
  def num_captions(self) -> int:
    return len(self.captions)

  def image(self, index: int) -> np.ndarray:
    if not 0 <= index < self.num_images:
      raise IndexError(f"image {index} out of range for {self.name} ({self.num_images} images)")
    return self.load_image(int(index))

  def image_captions(self) -> list[np.ndarray]:
    """For each image, the indices of its ground-truth captions."""
    order = np.argsort(self.caption_image, kind="stable")
    bounds = np.searchsorted(self.caption_image[order], np.arange(self.num_images + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(self.num_images)]


def _read_rgb(path: str) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _image_path(data_dir: str, entry: dict) -> str:
  sub = entry.get("filepath", "")
  return os.path.join(data_dir, sub, entry["filename"]) if sub else os.path.join(
      data_dir, entry["filename"])


def karpathy(karpathy_json: str, data_dir: str, *, split: str = "test",
             captions_per_image: int = 5, name: str = "") -> CaptionSet:
  """Reads one split of a Karpathy JSON; keeps the first `captions_per_image` per image."""
  if not karpathy_json or not os.path.isfile(karpathy_json):
    raise CaptionSetError(
        f"Karpathy split file {karpathy_json!r} not found. Download dataset_flickr30k.json / "
        "dataset_coco.json (Karpathy & Fei-Fei splits) and set --config.retllm.karpathy_json.")
  if not data_dir or not os.path.isdir(data_dir):
    raise CaptionSetError(
        f"Image folder {data_dir!r} not found. Set --config.retllm.data_dir to the folder "
        "holding the images (Flickr30k: flickr30k-images; COCO: the folder with val2014/).")
  with open(karpathy_json) as f:
    try:
      doc = json.load(f)
    except json.JSONDecodeError as e:
      raise CaptionSetError(f"{karpathy_json} is not valid JSON: {e}") from e
  if not isinstance(doc, dict) or "images" not in doc:
    raise CaptionSetError(f"{karpathy_json} has no 'images' list; is it a Karpathy split file?")
  entries = [e for e in doc["images"] if e.get("split") == split]
  if not entries:
    found = sorted({str(e.get("split")) for e in doc["images"]})
    raise CaptionSetError(f"{karpathy_json} has no images in split {split!r} "
                          f"(splits present: {found}).")
  paths, captions, caption_image = [], [], []
  for i, entry in enumerate(entries):
    sents = [s["raw"].strip() for s in entry.get("sentences", [])][:captions_per_image]
    if len(sents) < captions_per_image:
      raise CaptionSetError(f"{karpathy_json}: image {entry.get('filename')!r} has "
                            f"{len(sents)} captions, fewer than {captions_per_image}.")
    paths.append(_image_path(data_dir, entry))
    captions += sents
    caption_image += [i] * len(sents)
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise CaptionSetError(
        f"{len(missing)} of {len(paths)} images of split {split!r} are missing under "
        f"{data_dir!r}, e.g. {missing[:3]}. Point --config.retllm.data_dir at the image folder.")
  return CaptionSet(
      name=name or os.path.splitext(os.path.basename(karpathy_json))[0],
      num_images=len(paths), load_image=lambda i: _read_rgb(paths[i]), captions=captions,
      caption_image=np.asarray(caption_image, np.int64))


def from_caption_records(source, *, name: str, captions_per_image: int = 5,
                         decode: Callable[[object], np.ndarray] = np.asarray) -> CaptionSet:
  """A gallery from records {"image", "captions": {"text": [bytes|str]}} (TFDS coco_captions).

  Captions are read once here (one pass over the records); images are decoded lazily.
  """
  captions, caption_image = [], []
  for i in range(len(source)):
    texts = source[i]["captions"]["text"]
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
    if len(texts) < captions_per_image:
      raise CaptionSetError(f"{name}: example {i} has {len(texts)} captions, fewer than "
                            f"{captions_per_image}.")
    captions += [t.strip() for t in texts[:captions_per_image]]
    caption_image += [i] * captions_per_image
  return CaptionSet(name=name, num_images=len(source),
                    load_image=lambda i: np.asarray(decode(source[i]["image"]), np.uint8),
                    captions=captions, caption_image=np.asarray(caption_image, np.int64))


TFDS_COCO = "coco_captions/2014"


def coco_tfds(data_dir: str, *, split: str = "test", captions_per_image: int = 5) -> CaptionSet:
  """TFDS `coco_captions/2014` (its `test` split is Karpathy's 5k test), read without TF."""
  # Imported on use: tfds_source imports tensorflow_datasets, which only this reader needs.
  from retformer_jax.data import tfds_source

  ds = tfds_source.open_prepared(
      TFDS_COCO, data_dir,
      prepare=f"tfds build {TFDS_COCO} --file_format=array_record --data_dir=DATA_DIR")
  return from_caption_records(ds.source(split), name="coco_captions",
                              captions_per_image=captions_per_image,
                              decode=image_decode.decode_image)


def demo(demo_config, *, split: str = "test") -> CaptionSet:
  """The generated demo set: each image with its one caption."""
  src = demo_dataset.load(demo_config).splits[split]
  captions = [src[i]["text"] for i in range(len(src))]
  return CaptionSet(name="demo", num_images=len(src), load_image=lambda i: src[i]["image"],
                    captions=captions, caption_image=np.arange(len(src), dtype=np.int64))


def subset(data: CaptionSet, num_images: int) -> CaptionSet:
  """The first `num_images` images and their captions (smoke runs); 0 or more = everything."""
  if num_images <= 0 or num_images >= data.num_images:
    return data
  keep = np.flatnonzero(data.caption_image < num_images)
  return CaptionSet(name=data.name, num_images=num_images, load_image=data.load_image,
                    captions=[data.captions[i] for i in keep],
                    caption_image=np.asarray(data.caption_image)[keep])


DATASETS = ("flickr30k", "coco", "coco_tfds", "demo")


def load(retllm_config, demo_config) -> CaptionSet:
  """The test gallery named by `config.retllm.dataset`, limited by `retllm.num_images`."""
  rc = retllm_config
  if rc.dataset in ("flickr30k", "coco"):
    data = karpathy(rc.karpathy_json, rc.data_dir, split=rc.split,
                    captions_per_image=rc.captions_per_image, name=rc.dataset)
  elif rc.dataset == "coco_tfds":
    data = coco_tfds(rc.data_dir, split=rc.split, captions_per_image=rc.captions_per_image)
  elif rc.dataset == "demo":
    data = demo(demo_config, split=rc.split)
  else:
    raise CaptionSetError(f"Unknown config.retllm.dataset {rc.dataset!r}; choose one of "
                          f"{DATASETS}.")
  return subset(data, rc.num_images)
