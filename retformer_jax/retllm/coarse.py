"""Coarse stage: CLIP (or SigLIP) embeds the gallery's images and captions; cosine top-L lists
both ways.

The embeddings are cached in the workdir (atomic .npy files keyed by the encoder and the data
set), so a rerun of the fine stage never re-embeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Protocol, Sequence

import numpy as np

from retformer_jax import atomic_io
from retformer_jax.retllm import caption_sets
from retformer_jax.retllm import similarity


class Encoder(Protocol):
  """Embeds images and texts into one space (unnormalised vectors are fine)."""

  identity: str  # changes whenever the weights or preprocessing change

  def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class ClipEncoder:
  """The frozen encoder of the KB stages (`kb/encoder.py`: CLIP or SigLIP, by config.clip.path)
  seen through the `Encoder` protocol."""

  def __init__(self, encoder, dtype: str):
    self._encoder = encoder
    family = getattr(encoder, "family", "clip")
    self.identity = f"{family}:{encoder.info['id']}:{encoder.info['weights_sha256'][:16]}:{dtype}"

  def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
    return self._encoder.encode_images(list(images))

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    return self._encoder.encode_texts(list(texts))


def folder_stamp(folder: str) -> str:
  """Cheap identity of a weights folder: names, sizes and mtimes of its files."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(folder)):
    st = os.stat(os.path.join(folder, name))
    h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
  return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Candidates:
  """CLIP lists, best first: t2i [num_captions, L] image ids, i2t [num_images, L] caption ids."""

  t2i: np.ndarray
  i2t: np.ndarray


def embed(encoder: Encoder, data: caption_sets.CaptionSet, cache_dir: str,
          *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(image [N, d], text [M, d]) float32 embeddings, computed once and cached in cache_dir."""
  key = hashlib.sha256(json.dumps(
      [encoder.identity, data.name, data.num_images, list(data.captions)]).encode()).hexdigest()
  folder = os.path.join(cache_dir, key[:16])
  img_path, txt_path = os.path.join(folder, "image.npy"), os.path.join(folder, "text.npy")
  if os.path.isfile(img_path) and os.path.isfile(txt_path):
    return np.load(img_path), np.load(txt_path)
  os.makedirs(folder, exist_ok=True)
  img = []
  for start in range(0, data.num_images, batch_size):
    idx = range(start, min(start + batch_size, data.num_images))
    img.append(encoder.embed_images([data.image(i) for i in idx]))
  img = np.concatenate(img).astype(np.float32)
  txt = encoder.embed_texts(list(data.captions)).astype(np.float32)
  atomic_io.save_npy(img_path, img)
  atomic_io.save_npy(txt_path, txt)
  return img, txt


def candidates(image_emb: np.ndarray, text_emb: np.ndarray, length: int) -> Candidates:
  """Cosine top-`length` lists in both directions."""
  _, t2i = similarity.top_k(text_emb, image_emb, length)
  _, i2t = similarity.top_k(image_emb, text_emb, length)
  return Candidates(t2i=t2i, i2t=i2t)
