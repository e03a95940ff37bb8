"""A generated long-tailed image-caption data set: the demo's and the tests' data.

Every example is drawn from its own seed (data seed, split, index), so any process can produce
any slice without the others: the set is random access, identical on every host and run.

Each class has a visual signature (two colours, a stripe orientation and frequency, a shape)
that examples reproduce with jitter and noise, so features of even a random CLIP separate the
classes partly; captions name the class among other words, so neighbours' texts carry
semantics the image alone does not. Training counts follow an exponential profile (like
CIFAR-100-LT); optional label noise flips training labels while the caption stays truthful
(like WebVision's web text).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retformer_jax.data import base

_NOUNS = (
    "fox", "owl", "heron", "otter", "lynx", "moth", "carp", "wren", "newt", "ibis",
    "yak", "crab", "lark", "mole", "seal", "toad", "kite", "hare", "swan", "boar",
    "eel", "gull", "pika", "orca", "tern", "vole", "ray", "asp", "bison", "crane",
    "dingo", "egret", "finch", "gecko", "hyena", "koala", "lemur", "mink", "okapi", "puma")
_ADJECTIVES = ("amber", "azure", "crimson", "dusky", "emerald", "golden", "ivory", "jade",
               "lilac", "ochre", "pearl", "rusty", "sable", "teal", "umber", "violet")
_CONTEXT = ("in the grass", "on a rock", "near water", "at dusk", "in the snow", "in a field",
            "under a tree", "by the shore", "in the forest", "on a branch", "in the mud",
            "at noon")
_TEMPLATES = ("a photo of a {name} {ctx}.", "a {name} {ctx}", "picture: {name}, {ctx}",
              "my {name} {ctx}!", "the {name} seen {ctx}")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class DemoSpec:
  num_classes: int = 20
  max_per_class: int = 200
  imbalance: float = 50.0
  val_per_class: int = 10
  test_per_class: int = 30
  image_size: int = 32
  label_noise: float = 0.0
  seed: int = 0

  @classmethod
  def from_config(cls, demo_config) -> "DemoSpec":
    return cls(**{f.name: type(f.default)(demo_config[f.name]) for f in dataclasses.fields(cls)})

  def __post_init__(self):
    if not 2 <= self.num_classes <= len(_NOUNS) * len(_ADJECTIVES):
      raise ValueError(f"data.demo.num_classes must be in [2, {len(_NOUNS) * len(_ADJECTIVES)}]")
    if self.imbalance < 1 or self.max_per_class < 1:
      raise ValueError("data.demo.imbalance must be >= 1 and data.demo.max_per_class >= 1")
    if not 0 <= self.label_noise < 1:
      raise ValueError("data.demo.label_noise must be in [0, 1)")
    if self.image_size < 8:
      raise ValueError("data.demo.image_size must be >= 8")


def class_names(spec: DemoSpec) -> list[str]:
  names = []
  for c in range(spec.num_classes):
    noun = _NOUNS[c % len(_NOUNS)]
    adj = _ADJECTIVES[(c // len(_NOUNS) + 3 * c) % len(_ADJECTIVES)]
    names.append(f"{adj} {noun}")
  return names


def train_counts(spec: DemoSpec) -> np.ndarray:
  """Exponential profile: class c keeps max * imbalance^(-c / (C - 1)), at least 1."""
  c = np.arange(spec.num_classes)
  counts = spec.max_per_class * (1.0 / spec.imbalance) ** (c / max(spec.num_classes - 1, 1))
  return np.maximum(counts.astype(np.int64), 1)


@dataclasses.dataclass(frozen=True)
class _Signature:
  colour_a: np.ndarray
  colour_b: np.ndarray
  angle: float
  freq: float
  shape: int  # 0 disc, 1 square, 2 ring, 3 cross


def _signatures(spec: DemoSpec) -> list[_Signature]:
  rng = np.random.default_rng([spec.seed, 7919])
  sigs = []
  for c in range(spec.num_classes):
    sigs.append(_Signature(
        colour_a=rng.uniform(0.1, 0.9, 3), colour_b=rng.uniform(0.1, 0.9, 3),
        angle=float(rng.uniform(0, np.pi)), freq=float(rng.uniform(1.0, 4.0)),
        shape=int(c % 4)))
  return sigs


class DemoSplit:
  """Random-access source of one split (see data/base.py for the example schema)."""

  def __init__(self, spec: DemoSpec, split: str):
    if split not in _SPLIT_CODES:
      raise ValueError(f"Demo split {split!r} does not exist; choose one of {list(_SPLIT_CODES)}.")
    self.spec, self.split = spec, split
    self._names = class_names(spec)
    self._sigs = _signatures(spec)
    if split == "train":
      counts = train_counts(spec)
    else:
      per = spec.val_per_class if split == "val" else spec.test_per_class
      counts = np.full(spec.num_classes, per, np.int64)
    self._labels = np.repeat(np.arange(spec.num_classes), counts)
    self._noisy = self._labels.copy()
    if split == "train" and spec.label_noise > 0:
      rng = np.random.default_rng([spec.seed, 104729])
      flip = rng.random(len(self._labels)) < spec.label_noise
      shift = rng.integers(1, spec.num_classes, len(self._labels))
      self._noisy[flip] = (self._labels[flip] + shift[flip]) % spec.num_classes

  def __len__(self) -> int:
    return len(self._labels)

  @property
  def labels(self) -> np.ndarray:
    """Labels as given to the learner (noisy for a noisy training split)."""
    return self._noisy

  @property
  def true_labels(self) -> np.ndarray:
    return self._labels

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for demo split {self.split!r} "
                       f"of {len(self)} examples")
    true = int(self._labels[index])
    rng = np.random.default_rng([self.spec.seed, _SPLIT_CODES[self.split], int(index)])
    image = _draw(self._sigs[true], self.spec.image_size, rng)
    ctx = _CONTEXT[rng.integers(len(_CONTEXT))]
    text = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(name=self._names[true], ctx=ctx)
    return {"image": image, "label": int(self._noisy[index]), "text": text, "id": int(index),
            "true_label": true}


def _draw(sig: _Signature, size: int, rng: np.random.Generator) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  angle = sig.angle + rng.normal(0, 0.15)
  phase = rng.uniform(0, 2 * np.pi)
  wave = 0.5 + 0.5 * np.sin(2 * np.pi * sig.freq * (xx * np.cos(angle) + yy * np.sin(angle))
                            + phase)
  img = wave[..., None] * sig.colour_a + (1 - wave[..., None]) * (0.5 * sig.colour_a + 0.2)
  cy, cx = rng.uniform(0.3, 0.7, 2)
  r = rng.uniform(0.15, 0.3)
  dy, dx = yy - cy, xx - cx
  if sig.shape == 0:
    mask = dy ** 2 + dx ** 2 < r ** 2
  elif sig.shape == 1:
    mask = (np.abs(dy) < r * 0.8) & (np.abs(dx) < r * 0.8)
  elif sig.shape == 2:
    d = np.sqrt(dy ** 2 + dx ** 2)
    mask = (d < r) & (d > r * 0.55)
  else:
    mask = ((np.abs(dy) < r * 0.3) & (np.abs(dx) < r)) | ((np.abs(dx) < r * 0.3) & (np.abs(dy) < r))
  colour_b = np.clip(sig.colour_b + rng.normal(0, 0.05, 3), 0, 1)
  img = np.where(mask[..., None], colour_b, img)
  img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.08, img.shape)
  return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def load(demo_config) -> base.LabelledSplits:
  spec = DemoSpec.from_config(demo_config)
  return base.LabelledSplits(
      name="demo", class_names=class_names(spec), train_counts=train_counts(spec),
      splits={s: DemoSplit(spec, s) for s in _SPLIT_CODES})


def corpus(spec: DemoSpec) -> list[str]:
  """Every word the demo's captions and prompts can use (to train the demo tokenizer)."""
  words = [f"a photo of a {n}." for n in class_names(spec)]
  words += [t.format(name=n, ctx=c) for n in class_names(spec) for c in _CONTEXT
            for t in _TEMPLATES]
  return words
