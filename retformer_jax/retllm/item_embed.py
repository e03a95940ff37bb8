"""Coarse-stage embeddings of Items (text, image, or both) with the CLIP towers.

An item holding both is embedded as the reference's MMEB / M-BEIR drivers combine the towers:
a weighted sum of its image and text vectors, 0.8 image + 0.2 text for a query and 0.7 image +
0.3 text for a candidate, then compared by cosine. Our encoder L2-normalises each tower's
vector before the sum (the reference sums raw query vectors and normalised candidate vectors;
with CLIP's image and text norms of the same order the lists barely differ). The text is the
item's plain text (`<|image_1|>` placeholders removed).

Vectors are computed once per distinct image and text and cached in the workdir (.npy, keyed by
the encoder and the items), so a rerun of the fine stage never re-embeds.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

from retformer_jax import atomic_io
from retformer_jax.retllm import similarity
from retformer_jax.retllm.benchmarks.items import Item
from retformer_jax.retllm.item_scoring import ImageLoader

QUERY_WEIGHTS = (0.8, 0.2)  # (image, text)
CANDIDATE_WEIGHTS = (0.7, 0.3)


def item_key(item: Item) -> str:
  image = item.image if isinstance(item.image, str) else ("<loader>" if item.has_image else "")
  return json.dumps([item.plain_text, image])


def embed(encoder, items: Sequence[Item], weights: tuple[float, float], *, cache_dir: str,
          tag: str, batch_size: int = 64, load: ImageLoader | None = None) -> np.ndarray:
  """float32 [len(items), d] vectors (see the module docstring), cached under cache_dir."""
  key = hashlib.sha256(json.dumps([encoder.identity, tag, list(weights)] +
                                  [item_key(it) for it in items]).encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"{tag}_{key}.npy")
  if os.path.isfile(path):
    return np.load(path)
  load = load or ImageLoader()
  images, image_row, texts, text_row = [], {}, [], {}
  for it in items:
    if it.has_image and load.key(it) not in image_row:
      image_row[load.key(it)] = len(images)
      images.append(it)
    if it.has_text and it.plain_text not in text_row:
      text_row[it.plain_text] = len(texts)
      texts.append(it.plain_text)
  img_vecs = [encoder.embed_images([load(x) for x in images[s:s + batch_size]])
              for s in range(0, len(images), batch_size)]
  txt_vecs = [encoder.embed_texts(texts[s:s + batch_size])
              for s in range(0, len(texts), batch_size)]
  img = similarity.l2_normalise(np.concatenate(img_vecs)) if img_vecs else None
  txt = similarity.l2_normalise(np.concatenate(txt_vecs)) if txt_vecs else None
  w_img, w_txt = weights
  rows = []
  for it in items:
    if it.has_image and it.has_text:
      rows.append(w_img * img[image_row[load.key(it)]] + w_txt * txt[text_row[it.plain_text]])
    elif it.has_image:
      rows.append(img[image_row[load.key(it)]])
    elif it.has_text:
      rows.append(txt[text_row[it.plain_text]])
    else:
      raise ValueError(f"{tag}: an item has neither text nor an image.")
  out = np.stack(rows).astype(np.float32)
  os.makedirs(cache_dir, exist_ok=True)
  atomic_io.save_npy(path, out)
  return out


def top_k(query_vecs: np.ndarray, candidate_vecs: np.ndarray, k: int) -> np.ndarray:
  """Cosine top-k candidate rows of each query (the exact index), best first: int64 [Q, k']."""
  return similarity.top_k(query_vecs, candidate_vecs, k)[1]


def top_k_within(query_vecs: np.ndarray, candidate_vecs: np.ndarray,
                 lists: Sequence[np.ndarray], k: int) -> np.ndarray:
  """Exact cosine top-k of each query among its own candidate rows `lists[i]` (MMEB: every
  query has its own list), best first, ties to the earlier list position: int64 [Q, k] of
  list positions, -1 past a list's end. One small matmul per query (an index per list would
  cost more than the search)."""
  q = similarity.l2_normalise(query_vecs)
  c = similarity.l2_normalise(candidate_vecs)
  out = np.full((len(q), k), -1, np.int64)
  for i, ids in enumerate(lists):
    sims = c[np.asarray(ids)] @ q[i]
    top = np.argsort(-sims, kind="stable")[:k]
    out[i, :len(top)] = top
  return out
