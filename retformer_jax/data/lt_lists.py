"""The OLTR split lists (Liu et al. 2019) and the class-name files: reading and keys.

A list line is `<split dir>/<class dir>/<file> <label>`, e.g.
`train/apartment_building-outdoor/00000794.jpg 8` (Places-LT) or
`val/n01440764/ILSVRC2012_val_00029930.JPEG 0` (ImageNet-LT). The Places-LT lists ship with the
package (gzipped, 0.4 MB); `data.lt_splits_dir` points at another copy of the plain `.txt` lists.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import os
import re

import numpy as np

PLACES_LT_LISTS = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt",
                   "test": "Places_LT_test.txt"}
IMAGENET_LT_LISTS = {"val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}


@dataclasses.dataclass(frozen=True)
class SplitList:
  """One parsed list: relative paths and integer labels, in file order."""

  name: str
  paths: list[str]
  labels: np.ndarray  # int64 [N]

  def __len__(self) -> int:
    return len(self.paths)


def parse_list(text: str, name: str = "<list>") -> SplitList:
  """Parses `<path> <label>` lines; blank lines are ignored, anything else is an error."""
  paths, labels = [], []
  for n, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    path, sep, label = line.rpartition(" ")
    if not sep or not label.lstrip("-").isdigit():
      raise ValueError(f"{name}:{n}: expected '<path> <label>', got {line!r}")
    paths.append(path)
    labels.append(int(label))
  return SplitList(name=name, paths=paths, labels=np.asarray(labels, np.int64))


def read_list(filename: str, lt_splits_dir: str = "") -> SplitList:
  """Reads `filename` from `lt_splits_dir`, or the copy shipped with the package when "".

  Only the lists a reader needs at run time ship with the package (Places-LT); the others
  (ImageNet_LT_*.txt, iNaturalist18_val.txt) must come from `lt_splits_dir`.
  """
  if lt_splits_dir:
    path = os.path.join(lt_splits_dir, filename)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"Split list {path} not found. Set --config.data.lt_splits_dir to the folder holding "
          f"the OLTR lists ({filename}), or to \"\" to use the copy shipped with retformer_jax.")
    with open(path, encoding="utf-8") as f:
      return parse_list(f.read(), filename)
  resource = importlib.resources.files("retformer_jax.data") / "lt_splits" / (filename + ".gz")
  if not resource.is_file():
    raise FileNotFoundError(
        f"{filename} does not ship with retformer_jax; set --config.data.lt_splits_dir to the "
        f"folder holding the OLTR split lists.")
  return parse_list(gzip.decompress(resource.read_bytes()).decode("utf-8"), filename)


def class_dirs(lst: SplitList, num_classes: int) -> list[str]:
  """Class directory of every label (label -> `<class>` of `<split>/<class>/<file>`).

  The OLTR label ids are their own: Places-LT's differ from Places365's for a few classes
  (e.g. `desert_road` is 116 in Places-LT, 118 in Places365), so names follow the list.
  """
  dirs: dict[int, str] = {}
  for path, label in zip(lst.paths, lst.labels):
    d = path.split("/")[1]
    if dirs.setdefault(int(label), d) != d:
      raise ValueError(f"{lst.name}: label {label} names both {dirs[int(label)]!r} and {d!r}")
  if sorted(dirs) != list(range(num_classes)):
    raise ValueError(f"{lst.name}: labels cover {len(dirs)} classes, expected 0..{num_classes - 1}")
  return [dirs[c] for c in range(num_classes)]


def read_classnames(filename: str) -> list[tuple[str, str]]:
  """(directory name, readable name) per class from a shipped `*_classnames.txt`."""
  text = (importlib.resources.files("retformer_jax.data") / "classnames" / filename).read_text(
      encoding="utf-8")
  rows = []
  for line in text.splitlines():
    if line.strip():
      key, _, name = line.strip().partition(" ")
      rows.append((key, name.strip() or key))
  return rows


_WNID_RE = re.compile(r"^n\d{8}$")


@functools.lru_cache(maxsize=None)
def _imagenet_names() -> dict[str, str]:
  return dict(read_classnames("imagenet_classnames.txt"))


def readable(name: str) -> str:
  """A data set's raw class name -> the words a class prompt shows ("a photo of a {name}.").

  One clean-up for every reader: a WordNet id (`n01440764`) becomes its ImageNet name (`tench`,
  from the shipped imagenet_classnames.txt); a path (`/a/apartment_building/outdoor`, with
  Places365's one-letter folder dropped) is joined with spaces; `_`, and `-` in names without
  spaces (Places-LT's `apartment_building-outdoor`), become spaces. Names that already read as
  text (`Mercedes-Benz C-Class Sedan 2012`) keep their hyphens and slashes. An unknown wnid or
  a name with no words is an error: a prompt must not carry an id.
  """
  text = " ".join(str(name).split())
  if _WNID_RE.match(text):
    if text not in _imagenet_names():
      raise ValueError(f"Class name {name!r} is a WordNet id that imagenet_classnames.txt does "
                       "not name; a class prompt needs the class's words, not its id.")
    return _imagenet_names()[text]
  if " " not in text:
    parts = [p for p in text.split("/") if p]
    if len(parts) > 1 and len(parts[0]) == 1:
      parts = parts[1:]
    text = " ".join(parts).replace("-", " ")
  text = " ".join(text.replace("_", " ").split())
  if not any(ch.isalnum() for ch in text):
    raise ValueError(f"Class name {name!r} has no words to put in a class prompt.")
  return text


def places_key_from_list(path: str) -> str:
  """Key that a Places-LT list path and a TFDS `places365_small` filename share.

  `train/apartment_building-outdoor/00000794.jpg` -> `apartment_building/outdoor/00000794.jpg`
  (Places365 nests sub-categories; OLTR joins them with '-');
  `val/airfield/Places365_val_00003597.jpg` -> `Places365_val_00003597.jpg`.
  """
  parts = path.split("/")
  if len(parts) != 3 or parts[0] not in ("train", "val"):
    raise ValueError(f"Unexpected Places-LT list path {path!r}: expected train|val/<class>/<file>")
  if parts[0] == "val":
    return parts[2]
  return parts[1].replace("-", "/") + "/" + parts[2]


def places_key_from_tfds(filename: str) -> str:
  """Same key from a TFDS `places365_small` `filename` feature.

  `data_256/a/apartment_building/outdoor/00000794.jpg` -> `apartment_building/outdoor/00000794.jpg`;
  `val_256/Places365_val_00003597.jpg` -> `Places365_val_00003597.jpg`.
  """
  parts = filename.strip("/").split("/")
  if parts[0] == "data_256" and len(parts) >= 4:
    return "/".join(parts[2:])
  if parts[0] in ("val_256", "test_256") and len(parts) == 2:
    return parts[1]
  raise ValueError(f"Unexpected places365_small filename {filename!r}")


def match_keys(wanted: list[str], available: list[str], what: str) -> np.ndarray:
  """Index into `available` of every key in `wanted` (in `wanted` order); missing keys fail."""
  position = {k: i for i, k in enumerate(available)}
  missing = [k for k in wanted if k not in position]
  if missing:
    raise ValueError(f"{len(missing)} of {len(wanted)} {what} entries are not in the prepared "
                     f"data (e.g. {missing[:3]}); was it prepared from the full archives?")
  return np.asarray([position[k] for k in wanted], np.int64)
