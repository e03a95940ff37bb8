"""Fine scores of (query Item, candidate Item) pairs, whatever each item holds.

Plain pairs (an image alone against a text alone) go through the scorer's match question as
the caption pipeline sends them; the others through retllm.prompts' mixed layout. Both kinds go
to the scorer in one `score_pairs` call each, so pairs sharing images share prompt prefixes and
vision features as in the caption pipeline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from retformer_jax.retllm import prompts
from retformer_jax.retllm.benchmarks.items import Item


class ImageLoader:
  """Loads each item's image once per instance (items refer to files or loaders)."""

  def __init__(self):
    self._cache: dict = {}

  def key(self, item: Item):
    return item.image if isinstance(item.image, str) else id(item.image)

  def __call__(self, item: Item) -> np.ndarray:
    k = self.key(item)
    if k not in self._cache:
      self._cache[k] = item.load_image()
    return self._cache[k]


def _item_prompter(scorer):
  prompter = getattr(scorer, "_item_prompter", None)
  if prompter is None:
    prompter = prompts.ItemPrompter(scorer.prompter)
    scorer._item_prompter = prompter
  return prompter


def score(scorer, queries: Sequence[Item], candidates: Sequence[Item],
          pairs: Sequence[tuple[int, int]],
          load: ImageLoader | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(p_true, entropy) float32 [len(pairs)] of (queries[q], candidates[c]) for (q, c) in pairs."""
  load = load or ImageLoader()
  n = len(pairs)
  p, e = np.zeros(n, np.float32), np.zeros(n, np.float32)
  plain, mixed = [], []
  for k, (q, c) in enumerate(pairs):
    (plain if prompts.is_plain_pair(queries[q], candidates[c]) else mixed).append(k)

  def run(rows, image_of, text_of, prompter=None):
    if not rows:
      return
    images, image_index, texts, text_index, ids = [], {}, [], {}, []
    for k in rows:
      q, c = pairs[k]
      ikey, img = image_of(queries[q], candidates[c])
      tkey = text_of(queries[q], candidates[c])
      if ikey not in image_index:
        image_index[ikey] = len(images)
        images.append(img())
      if tkey not in text_index:
        text_index[tkey] = len(texts)
        texts.append(tkey)
      ids.append((image_index[ikey], text_index[tkey]))
    kw = {} if prompter is None else {"prompter": prompter}
    res = scorer.score_pairs(images, texts, ids, **kw)
    p[rows] = np.asarray(res.p_true, np.float32)
    e[rows] = np.asarray(res.entropy, np.float32)

  def plain_image(q: Item, c: Item):
    item = q if q.has_image else c
    return load.key(item), lambda: load(item)

  def plain_text(q: Item, c: Item) -> str:
    return (c if q.has_image else q).plain_text

  def mixed_images(q: Item, c: Item):
    shown = [x for x in (q, c) if x.has_image]
    return tuple(load.key(x) for x in shown), lambda: tuple(load(x) for x in shown)

  run(plain, plain_image, plain_text)
  run(mixed, mixed_images, prompts.mixed_content, _item_prompter(scorer) if mixed else None)
  return p, e
