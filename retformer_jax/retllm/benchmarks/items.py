"""The item model every RetLLM benchmark reader returns.

An `Item` is text, an image, or both (MMEB mixes them); its image is read only when asked
for. The four set types are what the benchmark families need:

  RetrievalSet     a CaptionSet (images <-> captions, both directions) that also keeps its
                   image paths (ShareGPT4V-1k, Urban1k, the Karpathy sets)
  PairChoiceSet    one image, its caption and a negative caption per row (SugarCrepe subset)
  MMEBTask         per query a list of candidate items, the first one positive (MMEB subset)
  ClassificationSet  labelled images, class names as text candidates, Many/Medium/Few buckets
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image

from retformer_jax import errors
from retformer_jax.retllm.caption_sets import CaptionSet

# The image placeholder of MMEB's query and target texts (Phi-3-V's image token).
IMAGE_PLACEHOLDER = "<|image_1|>"
_PLACEHOLDER_RE = re.compile(r"<\|image_\d+\|>")

ImageRef = Union[str, Callable[[], np.ndarray], None]


class BenchmarkLayoutError(errors.UserError, ValueError):
  """A benchmark download that is missing or not laid out as its own instructions leave it."""


def read_rgb(path: str) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Item:
  """A query or a candidate: `text` ("" = none) and `image` (a path, a loader, or None)."""

  text: str = ""
  image: ImageRef = None

  @property
  def has_image(self) -> bool:
    return self.image is not None and self.image != ""

  @property
  def has_text(self) -> bool:
    return bool(self.plain_text)

  @property
  def plain_text(self) -> str:
    """The text without image placeholders, whitespace collapsed at the seams."""
    return " ".join(_PLACEHOLDER_RE.sub(" ", self.text).split()) if self.text else ""

  def load_image(self) -> np.ndarray:
    """uint8 [H, W, 3] RGB."""
    if not self.has_image:
      raise ValueError("this item has no image")
    if callable(self.image):
      return np.asarray(self.image(), np.uint8)
    return read_rgb(self.image)

  def segments(self) -> list[tuple[str, str]]:
    """The item as an ordered chat content list: ("image", "") and ("text", words) parts.

    The image part goes where the text's `<|image_1|>` placeholder stood; an item with an image
    and no placeholder shows the image first. A placeholder without an image is dropped.
    """
    if not self.text:
      return [("image", "")] if self.has_image else []
    pieces = _PLACEHOLDER_RE.split(self.text)
    out: list[tuple[str, str]] = []
    placed = False
    for i, piece in enumerate(pieces):
      if i > 0 and self.has_image and not placed:
        out.append(("image", ""))
        placed = True
      words = piece.strip()
      if words:
        out.append(("text", words))
    if self.has_image and not placed:
      out.insert(0, ("image", ""))
    return out


@dataclasses.dataclass(frozen=True)
class RetrievalSet(CaptionSet):
  """A CaptionSet whose images are files; queries and candidates as Items per direction.

  t2i: queries = captions, candidates = images; i2t: the other way round. `positives(d)[q]`
  holds the candidate indices that are correct for query q.
  """

  image_paths: Sequence[str] = ()

  def queries(self, direction: str) -> list[Item]:
    return self._texts() if _direction(direction) == "t2i" else self._images()

  def candidates(self, direction: str) -> list[Item]:
    return self._images() if _direction(direction) == "t2i" else self._texts()

  def positives(self, direction: str) -> list[np.ndarray]:
    if _direction(direction) == "t2i":
      return [np.asarray([i], np.int64) for i in np.asarray(self.caption_image)]
    return self.image_captions()

  def _texts(self) -> list[Item]:
    return [Item(text=c) for c in self.captions]

  def _images(self) -> list[Item]:
    if self.image_paths:
      return [Item(image=p) for p in self.image_paths]
    return [Item(image=(lambda i=i: self.load_image(i))) for i in range(self.num_images)]


def _direction(direction: str) -> str:
  if direction not in ("t2i", "i2t"):
    raise ValueError(f"direction {direction!r}: use 't2i' or 'i2t'.")
  return direction


def retrieval_set(name: str, image_paths: Sequence[str], captions: Sequence[str]) -> RetrievalSet:
  """One caption per image, pair i = (image_paths[i], captions[i])."""
  paths = list(image_paths)
  return RetrievalSet(name=name, num_images=len(paths), load_image=lambda i: read_rgb(paths[i]),
                      captions=list(captions),
                      caption_image=np.arange(len(paths), dtype=np.int64), image_paths=paths)


@dataclasses.dataclass(frozen=True)
class PairChoiceSet:
  """Rows of (image, positive caption, negative caption): which caption matches the image?"""

  name: str
  subset: str
  ids: Sequence[str]
  image_paths: Sequence[str]
  positives: Sequence[str]
  negatives: Sequence[str]

  def __post_init__(self):
    n = len(self.ids)
    if not len(self.image_paths) == len(self.positives) == len(self.negatives) == n:
      raise BenchmarkLayoutError(f"{self.name}/{self.subset}: ids, images, captions and "
                                 "negative captions differ in length.")

  def __len__(self) -> int:
    return len(self.ids)

  def image(self, index: int) -> Item:
    return Item(image=self.image_paths[index])

  def choices(self, index: int) -> tuple[Item, Item]:
    """(positive caption, negative caption) of row `index`."""
    return Item(text=self.positives[index]), Item(text=self.negatives[index])


@dataclasses.dataclass(frozen=True)
class MMEBTask:
  """One MMEB subset: per query its own candidate list, the first candidate the positive.

  `queries[i]` and `candidates[i]` may be built on access (a subset holds ~1,000 queries with
  ~1,000 candidates each: the reader keeps the parquet columns, not a million Items).
  """

  name: str
  meta_task: str
  queries: Sequence[Item]
  candidates: Sequence[Sequence[Item]]

  POSITIVE = 0

  def __post_init__(self):
    if len(self.queries) != len(self.candidates):
      raise BenchmarkLayoutError(f"MMEB {self.name}: {len(self.queries)} queries but "
                                 f"{len(self.candidates)} candidate lists.")

  def __len__(self) -> int:
    return len(self.queries)

  def positive(self, index: int) -> int:
    del index
    return self.POSITIVE


@dataclasses.dataclass(frozen=True)
class ClassificationSet:
  """Images with labels; class names are the text candidates.

  `prompts` are the class prompts the CLIP coarse stage embeds (`template` filled with each
  readable class name); the MLLM stage shows `class_names` themselves. `buckets[c]` is 0/1/2
  for Many/Medium/Few, or None when the set has no training counts.
  """

  name: str
  images: Sequence[Item]
  labels: np.ndarray  # int64 [num_images]
  class_names: Sequence[str]
  template: str
  buckets: np.ndarray | None = None  # int32 [num_classes]

  def __post_init__(self):
    labels = np.asarray(self.labels)
    if labels.shape != (len(self.images),):
      raise BenchmarkLayoutError(f"{self.name}: {len(self.images)} images but labels of shape "
                                 f"{labels.shape}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
      raise BenchmarkLayoutError(f"{self.name}: labels outside [0, {len(self.class_names)}).")
    if self.buckets is not None and np.shape(self.buckets) != (len(self.class_names),):
      raise BenchmarkLayoutError(f"{self.name}: buckets must have one entry per class.")
    if "{name}" not in self.template:
      raise BenchmarkLayoutError(f"class prompt template {self.template!r} has no '{{name}}' "
                                 "placeholder, e.g. 'a photo of a {name}.'")

  def __len__(self) -> int:
    return len(self.images)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def prompts(self) -> list[str]:
    return [self.template.format(name=n) for n in self.class_names]

  def candidates(self) -> list[Item]:
    """The class names as text candidates (what the MLLM re-scores)."""
    return [Item(text=n) for n in self.class_names]


def require_dir(path: str, what: str, fix: str) -> str:
  if not path or not os.path.isdir(path):
    raise BenchmarkLayoutError(f"{what} folder {path!r} not found; {fix}")
  return path


def require_file(path: str, what: str, fix: str) -> str:
  if not os.path.isfile(path):
    raise BenchmarkLayoutError(f"{what} {path!r} not found; {fix}")
  return path


def require_images(paths: Sequence[str], what: str, fix: str) -> None:
  """One line naming how many of the (distinct) image files are missing and the first few."""
  unique = sorted({p for p in paths if p})
  missing = [p for p in unique if not os.path.isfile(p)]
  if missing:
    raise BenchmarkLayoutError(f"{what}: {len(missing)} of {len(unique)} images are missing, "
                               f"e.g. {missing[:2]}; {fix}")
