"""TFDS builder for WebVision 1.0 (Li et al. 2017), read from a manual download.

2.4M Google and Flickr images of the 1,000 ImageNet classes, labelled by the query that found
them (noisy), with the page's web text (title + description); a human-labelled val set of
50,000. Prepare once (writes array_record files, which the readers open without TensorFlow);
this builder itself needs no TensorFlow:

  python -m retformer_jax.data.webvision_builder --manual_dir=MANUAL_DIR --data_dir=DATA_DIR

or, with the `prep` extra installed (the `tfds` command line imports TensorFlow):

  tfds build webvision --imports=retformer_jax.data.webvision_builder \
      --manual_dir=MANUAL_DIR --data_dir=DATA_DIR --file_format=array_record

The parsing below is plain Python (no TensorFlow, no TFDS) so that it is testable on its own.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from typing import Callable, Iterator

from absl import logging
from etils import epath
from PIL import Image
import tensorflow_datasets as tfds

from retformer_jax.data import lt_lists

SOURCES = ("google", "flickr")
VAL_IMAGE_DIRS = ("val_images_256", "val_images")
MAX_TEXT_CHARS = 1000  # CLIP reads 77 tokens; the rest of a long description is noise

_MANUAL = """\
Download WebVision 1.0 from https://data.vision.ee.ethz.ch/cvl/webvision/dataset2017.html
(resized 256 px images are enough: google_resized_256.tar, flickr_resized_256.tar,
val_images_256.tar; plus info.tar and the meta-information tars of google and flickr) and
extract everything into MANUAL_DIR so that it holds:
  info/train_filelist_google.txt   info/train_filelist_flickr.txt   info/val_filelist.txt
  info/train_meta_list_google.txt  info/train_meta_list_flickr.txt  [info/synsets.txt]
  google/q0001/000000.jpg ...      flickr/q0001/000000.jpg ...      (training images)
  google/q0001.json ...            flickr/q0001.json ...            (web text meta data)
  val_images_256/val000001.jpg ... (or val_images/ for the full-size set)
"""


def parse_filelist(text: str, name: str) -> list[tuple[str, int]]:
  """`google/q0001/000000.jpg 0` lines -> [(relative path, label)]."""
  lst = lt_lists.parse_list(text, name)
  return list(zip(lst.paths, (int(x) for x in lst.labels)))


def parse_meta_list(text: str, name: str) -> list[tuple[str, int]]:
  """`google/q0001.json 1` lines -> [(json path, 0-based entry)]; line i describes line i of
  the matching train file list (the file's entries are numbered from 1)."""
  out = []
  for path, number in parse_filelist(text, name):
    if number < 1:
      raise ValueError(f"{name}: entry numbers start at 1, got {number} for {path}")
    out.append((path, number - 1))
  return out


def parse_synsets(text: str) -> list[str]:
  """info/synsets.txt (`n01440764 tench, Tinca tinca`) -> wnids in WebVision label order."""
  return [line.split()[0] for line in text.splitlines() if line.strip()]


_TAG = re.compile(r"<[^>]*>")


def web_text(entry: dict) -> str:
  """The page's title and description, HTML tags removed, whitespace collapsed."""
  parts = []
  for key in ("title", "description"):
    value = entry.get(key)
    if isinstance(value, str):
      value = " ".join(_TAG.sub(" ", value).split())
      if value and value not in parts:
        parts.append(value)
  return ". ".join(parts)[:MAX_TEXT_CHARS]


def _read(manual_dir: str, rel: str) -> str:
  path = os.path.join(manual_dir, rel)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found in the WebVision manual download.\n{_MANUAL}")
  with open(path, encoding="utf-8") as f:
    return f.read()


def label_map(manual_dir: str, wnids: list[str]) -> list[int]:
  """WebVision label -> index in `wnids` (identity unless info/synsets.txt says otherwise)."""
  path = os.path.join(manual_dir, "info", "synsets.txt")
  if not os.path.exists(path):
    return list(range(len(wnids)))
  theirs = parse_synsets(_read(manual_dir, "info/synsets.txt"))
  position = {w: i for i, w in enumerate(wnids)}
  unknown = [w for w in theirs if w not in position]
  if unknown or len(theirs) != len(wnids):
    raise ValueError(f"info/synsets.txt lists {len(theirs)} classes, {len(unknown)} of them not "
                     f"ImageNet-1k wnids (e.g. {unknown[:3]})")
  return [position[w] for w in theirs]


def train_records(manual_dir: str, wnids: list[str],
                  sources=SOURCES) -> Iterator[tuple[str, dict]]:
  """(key, {path, label, text, source}) for every training image, in file-list order."""
  remap = label_map(manual_dir, wnids)

  @functools.lru_cache(maxsize=4)
  def meta_file(rel):
    return json.loads(_read(manual_dir, rel))

  for source in sources:
    files = parse_filelist(_read(manual_dir, f"info/train_filelist_{source}.txt"),
                           f"train_filelist_{source}.txt")
    metas = parse_meta_list(_read(manual_dir, f"info/train_meta_list_{source}.txt"),
                            f"train_meta_list_{source}.txt")
    if len(files) != len(metas):
      raise ValueError(f"info/train_filelist_{source}.txt has {len(files)} lines but "
                       f"info/train_meta_list_{source}.txt has {len(metas)}; they must align.")
    for (path, label), (meta_path, entry) in zip(files, metas):
      entries = meta_file(meta_path)
      if not 0 <= entry < len(entries):
        raise ValueError(f"{meta_path} has {len(entries)} entries; {path} refers to entry "
                         f"{entry + 1}")
      yield path, {"path": os.path.join(manual_dir, path), "label": remap[label],
                   "text": web_text(entries[entry]), "source": source}


def val_records(manual_dir: str, wnids: list[str]) -> Iterator[tuple[str, dict]]:
  """(key, {path, label, text="", source="val"}) for the 50,000 human-labelled images."""
  remap = label_map(manual_dir, wnids)
  folder = next((d for d in VAL_IMAGE_DIRS if os.path.isdir(os.path.join(manual_dir, d))), None)
  if folder is None:
    raise FileNotFoundError(f"None of {VAL_IMAGE_DIRS} found in {manual_dir}.\n{_MANUAL}")
  for name, label in parse_filelist(_read(manual_dir, "info/val_filelist.txt"),
                                    "val_filelist.txt"):
    yield name, {"path": os.path.join(manual_dir, folder, name), "label": remap[label],
                 "text": "", "source": "val"}


def jpeg_bytes(path: str) -> bytes | None:
  """The file's bytes if it is an RGB JPEG, else re-encoded as one; None if unreadable."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as img:
      if img.format == "JPEG" and img.mode == "RGB":
        img.verify()
        return data
      out = io.BytesIO()
      img.convert("RGB").save(out, format="JPEG", quality=95)
      return out.getvalue()
  except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for corrupt files
    logging.warning("Skipping unreadable image %s: %s", path, e)
    return None


def imagenet_wnids() -> list[str]:
  return [k for k, _ in lt_lists.read_classnames("imagenet_classnames.txt")]


class Webvision(tfds.core.GeneratorBasedBuilder):
  """WebVision 1.0: images, noisy query labels and web text; human-labelled val."""

  name = "webvision"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Google + Flickr training images with web text; val set."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default probes `importlib_resources` (a Python < 3.9 backport) for package builders.
    return epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="WebVision 1.0 with web text (title + description) per training image.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=imagenet_wnids()),
            "text": tfds.features.Text(),
            "source": tfds.features.Text(),
            "filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://data.vision.ee.ethz.ch/cvl/webvision/dataset2017.html",
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    wnids = imagenet_wnids()
    return {"train": self._generate_examples(lambda: train_records(manual_dir, wnids)),
            "val": self._generate_examples(lambda: val_records(manual_dir, wnids))}

  def _generate_examples(self, records: Callable[[], Iterator[tuple[str, dict]]]):
    skipped = 0
    for key, rec in records():
      data = jpeg_bytes(rec["path"])
      if data is None:
        skipped += 1
        continue
      yield key, {"image": data, "label": rec["label"], "text": rec["text"],
                  "source": rec["source"], "filename": key}
    if skipped:
      logging.warning("WebVision: skipped %d unreadable images", skipped)


def main(argv=None) -> None:
  """`python -m retformer_jax.data.webvision_builder --manual_dir=M --data_dir=D` (no TF)."""
  import argparse

  parser = argparse.ArgumentParser(description="Prepare WebVision 1.0 as array_record files.")
  parser.add_argument("--manual_dir", required=True, help="the extracted WebVision download")
  parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = TFDS default)")
  args = parser.parse_args(argv)
  builder = Webvision(data_dir=args.data_dir or None)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  print(f"WebVision prepared in {builder.data_dir}")


if __name__ == "__main__":
  main()
