"""Frozen CLIP or SigLIP as a batched, jitted, data-parallel embedding function over the local
devices.

Each process embeds its own shards with its own devices (no cross-host traffic), so the mesh
here is local: batch split over `data`, weights replicated, and config.embed.batch_size is the
batch of each process (the same batches on 1 or N hosts, hence bit-identical stores). Batches
always have the same shape (the last one is padded), so one compilation serves the whole job.
"""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from retformer_jax.convert import hf
from retformer_jax.data.clip_preprocess import ClipPreprocessor
from retformer_jax.data.siglip_preprocess import SiglipPreprocessor
from retformer_jax.demo import clip as demo_clip
from retformer_jax.demo import dataset as demo
from retformer_jax.parallel import mesh as mesh_lib


def weights_sha256(params) -> str:
  """Deterministic hash of a params pytree: sorted leaf paths, dtypes, shapes and bytes."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  h = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.asarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


class Encoder:
  """`encode(pixels, texts)` -> L2-normalised float32 image and text vectors."""

  def __init__(self, model, params, preprocessor, *, encoder_id: str, batch_size: int,
               max_text_length: int, devices=None, family: str = "clip"):
    """`preprocessor`: a ClipPreprocessor / SiglipPreprocessor, or a no-argument callable making
    one on first use (a skipped, up-to-date store then never loads the tokenizer). `family`
    ("clip" or "siglip") is recorded with the stores: vectors of two families never mix."""
    self.devices = list(devices if devices is not None else jax.local_devices())
    n = len(self.devices)
    self.batch_size = max(n, -(-batch_size // n) * n)
    self.max_text_length = max_text_length
    self._preprocessor = preprocessor
    self.family = family
    self.info = {"id": encoder_id, "weights_sha256": weights_sha256(params)}
    mesh = Mesh(np.asarray(self.devices), ("data",))
    rep, rows = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    self._params = jax.device_put(params, rep)

    def fn(params, pixels_bhwc, ids_bt, mask_bt):
      img_bd = model.apply({"params": params}, pixels_bhwc, method=model.encode_image)
      txt_bd = model.apply({"params": params}, ids_bt, mask_bt, method=model.encode_text)
      norm = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa
      return norm(img_bd.astype(jnp.float32)), norm(txt_bd.astype(jnp.float32))

    def image_fn(params, pixels_bhwc):
      img_bd = model.apply({"params": params}, pixels_bhwc, method=model.encode_image)
      img_bd = img_bd.astype(jnp.float32)
      return img_bd / jnp.maximum(jnp.linalg.norm(img_bd, axis=-1, keepdims=True), 1e-12)

    def text_fn(params, ids_bt, mask_bt):
      txt_bd = model.apply({"params": params}, ids_bt, mask_bt, method=model.encode_text)
      txt_bd = txt_bd.astype(jnp.float32)
      return txt_bd / jnp.maximum(jnp.linalg.norm(txt_bd, axis=-1, keepdims=True), 1e-12)

    # Inputs are placed on the local devices explicitly: in a multi-process job, jit refuses
    # host NumPy arrays for a non-replicated sharding.
    self._rows = rows
    self._fn = jax.jit(fn, in_shardings=(rep, rows, rows, rows), out_shardings=(rows, rows))
    self._image_fn = jax.jit(image_fn, in_shardings=(rep, rows), out_shardings=rows)
    self._text_fn = jax.jit(text_fn, in_shardings=(rep, rows, rows), out_shardings=rows)
    self.dim = None

  @property
  def preprocessor(self):
    if callable(self._preprocessor) and not hasattr(self._preprocessor, "images"):
      self._preprocessor = self._preprocessor()
    return self._preprocessor

  def preprocess_image(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [S, S, 3] normalised pixels (run in worker threads)."""
    return np.asarray(self.preprocessor.images([image])[0], np.float32)

  def _tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.preprocessor.texts(list(texts))
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    t = self.max_text_length
    if ids.shape[1] > t:
      raise ValueError(f"The tokenizer returned {ids.shape[1]} tokens, more than "
                       f"config.clip.max_text_length={t}; make them agree.")
    pad = ((0, 0), (0, t - ids.shape[1]))
    return np.pad(ids, pad), np.pad(mask, pad)

  def encode(self, pixels: list[np.ndarray], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Up to `batch_size` preprocessed images and their texts -> ([n, d], [n, d]) float32."""
    n = len(pixels)
    if not 0 < n <= self.batch_size or len(texts) != n:
      raise ValueError(f"encode takes 1..{self.batch_size} images with one text each, got "
                       f"{n} images and {len(texts)} texts.")
    b = self.batch_size
    px = np.zeros((b, *pixels[0].shape), np.float32)
    px[:n] = np.stack(pixels)
    ids, mask = self._tokens(list(texts) + [""] * (b - n))
    img, txt = self._fn(self._params, *jax.device_put((px, ids, mask), self._rows))
    img, txt = np.asarray(img)[:n], np.asarray(txt)[:n]
    self.dim = img.shape[1]
    return img, txt

  def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
    """Any number of uint8 [H, W, 3] images -> L2-normalised float32 [n, d]."""
    b, out = self.batch_size, []
    for i in range(0, len(images), b):
      chunk = [self.preprocess_image(im) for im in images[i:i + b]]
      px = np.zeros((b, *chunk[0].shape), np.float32)
      px[:len(chunk)] = np.stack(chunk)
      out.append(np.asarray(self._image_fn(self._params, jax.device_put(px, self._rows)))
                 [:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.dim or 0), np.float32)

  def encode_texts(self, texts: list[str]) -> np.ndarray:
    """Any number of texts -> L2-normalised float32 [n, d] (e.g. class prompts)."""
    b, out = self.batch_size, []
    for i in range(0, len(texts), b):
      chunk = list(texts[i:i + b])
      ids, mask = self._tokens(chunk + [""] * (b - len(chunk)))
      ids, mask = jax.device_put((ids, mask), self._rows)
      out.append(np.asarray(self._text_fn(self._params, ids, mask))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.dim or 0), np.float32)


def demo_clip_dir(workdir: str) -> str:
  return os.path.join(workdir, "demo_clip")


def clip_folder(config, workdir: str) -> str:
  return os.path.expanduser(config.clip.path) if config.clip.path else demo_clip_dir(workdir)


def ensure_demo_clip(config, workdir: str) -> None:
  """Builds WORKDIR/demo_clip once (process 0), when config.clip.path is empty."""
  if config.clip.path:
    return
  folder = demo_clip_dir(workdir)
  if jax.process_index() == 0:
    spec = demo.DemoSpec.from_config(config.data.demo)
    demo_clip.build_demo_clip(folder, demo.corpus(spec), image_size=spec.image_size,
                              seed=config.seed)


def load_encoder(config, workdir: str) -> Encoder:
  """The configured encoder (config.clip.path: a CLIP or SigLIP folder, by its config.json
  model_type; empty: the demo CLIP) with its preprocessor, ready to embed.

  CLIP texts are padded to config.clip.max_text_length; SigLIP texts always to the text tower's
  length (64 in the released models), as they were trained."""
  folder = clip_folder(config, workdir)
  family, model, params = hf.load_image_text_encoder(
      folder, dtype=config.clip.dtype, scan_layers=config.clip.scan_layers)
  if family == "siglip":
    max_text_length = model.config.text.max_position_embeddings
    pre = lambda: SiglipPreprocessor.from_folder(folder)  # noqa: E731
  else:
    max_text_length = config.clip.max_text_length
    pre = lambda: ClipPreprocessor.from_folder(  # noqa: E731
        folder, max_length=config.clip.max_text_length)
  return Encoder(model, params, pre, encoder_id=os.path.basename(os.path.normpath(folder)),
                 batch_size=config.embed.batch_size or config.clip.batch_size,
                 max_text_length=max_text_length, family=family)
