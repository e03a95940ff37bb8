"""A labelled data set from a folder of images: `--config.data.name=image_folder`.

  DIR/train/<class>/*.jpg        training images, one folder per class
  DIR/test/<class>/*             evaluation images (classes: a subset of train's)
  DIR/val/<class>/*              optional (read when present); any split folder named in
                                 data.train_split / data.eval_splits works the same way
  DIR/captions.jsonl             optional: {"path": "train/cat/1.jpg", "caption": "..."} a line

Class names are the training split's folder names (sorted; `_` reads as a space in prompts);
Many / Medium / Few come from the training counts as for every data set. A caption becomes the
image's text in the KB; an image without one gets the class prompt. Files that cannot be opened
as images (checked from their header when the set is loaded) are left out of their split and
listed in one warning; an image that opens but fails to decode is skipped by the embed stage and
listed in its store manifest.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading

import numpy as np
from absl import logging
from PIL import Image

from retformer_jax import errors
from retformer_jax.data import base, image_decode

CAPTIONS_FILE = "captions.jsonl"
OPTIONAL_SPLITS = ("val",)  # read when present, e.g. as a KB source `image_folder:val`
_checked: dict[tuple, bool] = {}  # (path, size, mtime) -> opens as an image; one check a process
_checked_lock = threading.Lock()


class ImageFolderError(errors.UserError, ValueError):
  """The folder given as data.root does not have the layout this reader needs."""


def _listdir(path: str) -> list[str]:
  return sorted(n for n in os.listdir(path) if not n.startswith("."))


def _opens(path: str) -> bool:
  """True when PIL recognises the file as an image (its header; the pixels are read later)."""
  try:
    st = os.stat(path)
  except OSError:
    return False
  key = (path, st.st_size, st.st_mtime_ns)
  with _checked_lock:
    if key in _checked:
      return _checked[key]
  try:
    with Image.open(path) as img:
      ok = min(img.size) > 0
  except Exception:  # PIL raises many types for files that are not images
    ok = False
  with _checked_lock:
    _checked[key] = ok
  return ok


def _read_captions(root: str) -> dict[str, str]:
  """captions.jsonl -> {path relative to root: caption}; a malformed line is an error."""
  path = os.path.join(root, CAPTIONS_FILE)
  if not os.path.exists(path):
    return {}
  out = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        entry = json.loads(line)
        rel, caption = entry["path"], entry["caption"]
        if not isinstance(rel, str) or not isinstance(caption, str):
          raise TypeError("path and caption must be strings")
      except (ValueError, KeyError, TypeError) as e:
        raise ImageFolderError(
            f"{path} line {number}: expected a JSON object "
            f'{{"path": "train/<class>/<file>", "caption": "..."}} ({type(e).__name__}: {e}).'
        ) from None
      full = rel if os.path.isabs(rel) else os.path.join(root, rel)
      out[os.path.relpath(os.path.normpath(full), root)] = caption
  return out


class ImageFolderSplit:
  """One split folder as a source of {image, label, text, id} examples (id = position)."""

  def __init__(self, root: str, paths: list[str], labels: np.ndarray, captions: dict[str, str]):
    self.root = root
    self.paths = paths  # relative to root
    self._labels = np.asarray(labels, np.int64)
    self.texts = [captions.get(p, "") for p in paths]  # "" = the class prompt is used

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for a split of {len(self)} images")
    path = os.path.join(self.root, self.paths[index])
    with open(path, "rb") as f:
      data = f.read()
    try:
      image = image_decode.decode_image(data)
    except Exception as e:  # the embed stage skips and lists the example
      raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    return {"image": image, "label": int(self._labels[index]), "text": self.texts[index],
            "id": index}


def _scan_split(root: str, split: str, class_index: dict[str, int], num_workers: int):
  """(paths, labels, unreadable paths) of root/split/<class>/*, in class then file order."""
  folder = os.path.join(root, split)
  unknown = [c for c in _listdir(folder)
             if os.path.isdir(os.path.join(folder, c)) and c not in class_index]
  if unknown:
    raise ImageFolderError(
        f"{folder} has class folders {unknown[:5]} that {os.path.join(root, 'train')} does not "
        "have; every class needs training images (add them, or remove those folders).")
  candidates = []
  for name, label in class_index.items():
    class_dir = os.path.join(folder, name)
    if os.path.isdir(class_dir):
      candidates += [(os.path.join(split, name, f), label) for f in _listdir(class_dir)
                     if os.path.isfile(os.path.join(class_dir, f))]
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    ok = list(pool.map(lambda c: _opens(os.path.join(root, c[0])), candidates))
  kept = [c for c, good in zip(candidates, ok) if good]
  bad = [c[0] for c, good in zip(candidates, ok) if not good]
  return [p for p, _ in kept], np.asarray([label for _, label in kept], np.int64), bad


def load(data_config) -> base.LabelledSplits:
  root = os.path.abspath(os.path.expanduser(data_config.root)) if data_config.root else ""
  if not root or not os.path.isdir(root):
    raise ImageFolderError(
        f"--config.data.root={data_config.root!r} is not a folder; point it at a folder "
        "holding train/<class>/*.jpg and test/<class>/* (see configs/image_folder.py).")
  train = data_config.train_split
  train_dir = os.path.join(root, train)
  classes = ([c for c in _listdir(train_dir) if os.path.isdir(os.path.join(train_dir, c))]
             if os.path.isdir(train_dir) else [])
  if not classes:
    raise ImageFolderError(f"{train_dir} holds no class folders; the training split needs one "
                           "folder of images per class, e.g. train/cat/1.jpg.")
  class_index = {c: i for i, c in enumerate(classes)}
  captions = _read_captions(root)
  wanted = [train, *[s for s in data_config.eval_splits if s != train]]
  missing = [s for s in wanted if not os.path.isdir(os.path.join(root, s))]
  if missing:
    raise ImageFolderError(f"{root} has no split folder(s) {missing}; it has "
                           f"{[d for d in _listdir(root) if os.path.isdir(os.path.join(root, d))]}."
                           " Add them, or set --config.data.eval_splits to folders it has.")
  optional = [s for s in OPTIONAL_SPLITS
              if s not in wanted and os.path.isdir(os.path.join(root, s))]
  splits, unreadable = {}, []
  for split in wanted + optional:
    paths, labels, bad = _scan_split(root, split, class_index, data_config.num_workers)
    unreadable += bad
    splits[split] = ImageFolderSplit(root, paths, labels, captions)
  if unreadable:
    logging.warning("%s: %d files are not readable images and were left out: %s", root,
                    len(unreadable), ", ".join(unreadable))
  counts = np.bincount(splits[train].labels, minlength=len(classes)).astype(np.int64)
  empty = [c for c, n in zip(classes, counts) if n == 0]
  if empty:
    raise ImageFolderError(f"Class folder(s) {empty[:5]} of {train_dir} hold no readable image; "
                           "add images or remove the folder.")
  names = [" ".join(c.replace("_", " ").split()) or c for c in classes]
  return base.LabelledSplits(name="image_folder", class_names=names, train_counts=counts,
                             splits=splits)
