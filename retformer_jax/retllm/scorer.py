"""Pointwise (image, caption) match scores from Qwen2.5-VL / Qwen2-VL: P("True") and entropy.

    scorer = PairScorer.from_folder("Qwen2.5-VL-7B-Instruct", dtype="bfloat16")
    res = scorer.score_text_to_image(caption, candidate_images)   # res.p_true, res.entropy: [K]
    res = scorer.score_image_to_text(image, candidate_captions)
    res = scorer.score_pairs(images, captions, pairs)             # any (image, caption) pairs

Each pair is scored as the reference does with one forward per pair: chat [image, "Does the
image match the caption: <{caption}>? Please directly output True or False"] + generation
prompt; softmax over the whole vocabulary of the last position's logits; p_true = its value at
the token "True" (floored to `floor_decimals`), entropy = -sum p log(p + 1e-10).

Same numbers, less work: pairs are grouped by image; each group's shared token prefix (system
prompt, image, question head) is computed once (K/V cached) and its captions run as a padded
batch against it; vision features are cached per image (keyed by a hash of its pixels); only the
last position goes through lm_head. With re-injection, layers from the first armable one on
run over the whole sequence (the injected FFN mixes every position), earlier layers use the cache.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from retformer_jax.convert import hf
from retformer_jax.data.qwen_preprocess import QwenImageProcessor, QwenPrompter
from retformer_jax.models import qwen2_5_vl, qwen_layout
from retformer_jax.models.qwen2_5_vl import QwenVL
from retformer_jax.models.qwen_injection import InjectionConfig
from retformer_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class ScoreResult:
  p_true: np.ndarray  # [n] float64: P("True"), floored if floor_decimals is not None
  entropy: np.ndarray  # [n] float64: entropy of the full-vocabulary softmax, last position
  armed_layer: np.ndarray  # [n] int: the re-injected layer (-1: none / injection off)


def _bucket(n: int, step: int) -> int:
  return max(step, -(-n // step) * step)


def image_key(image: np.ndarray) -> str:
  a = np.ascontiguousarray(image)
  return hashlib.sha1(a.tobytes() + str((a.shape, a.dtype.str)).encode()).hexdigest()


class PairScorer:
  """P("True") scorer for (image, caption) pairs; see the module docstring.

  floor_decimals: P("True") floored to this many decimals (None: raw). injection: visual
  re-injection (None or enabled=False: off). batch_size: prompt prefixes per prefill and
  captions per extend call. mesh / axis_rules: shard the weights over a device mesh by their
  logical axes (None: one device). prefix_bucket / suffix_bucket: token lengths are padded to
  multiples of these so that few shapes get compiled. chat_template: overrides the tokenizer's
  (from_folder uses the processor's chat_template.json when the folder has one).
  """

  def __init__(self, model: QwenVL, params, tokenizer, image_processor: QwenImageProcessor, *,
               floor_decimals: int | None = 2, injection: InjectionConfig | None = None,
               batch_size: int = 8, vision_cache_size: int = 2048, prefix_bucket: int = 64,
               suffix_bucket: int = 16, mesh: jax.sharding.Mesh | None = None,
               axis_rules: Sequence[tuple[str, str | None]] = (),
               chat_template: str | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if floor_decimals is not None and floor_decimals < 0:
      raise ValueError(f"floor_decimals={floor_decimals}: use None (no flooring) or >= 0.")
    self.model = model
    self.cfg = model.cfg
    self.mesh, self.axis_rules = mesh, tuple(axis_rules)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(model.param_dtype), params)
    if mesh is None:
      self.params = jax.device_put(params)
    else:  # weights born sharded over `model` by their logical axes
      self.params = jax.device_put(params, qwen2_5_vl.param_shardings(model, mesh,
                                                                      self.axis_rules))
    self.prompter = QwenPrompter(tokenizer, self.cfg.image_token_id, chat_template=chat_template)
    self.processor = image_processor
    if image_processor.merge_size != self.cfg.vision.merge_size or \
        image_processor.patch_size != self.cfg.vision.patch_size:
      raise ValueError("The image processor's patch/merge size differ from the model's; use the "
                       "preprocessor_config.json saved with these weights.")
    self.floor_decimals = floor_decimals
    self.injection = injection if injection is not None and injection.enabled else None
    L = self.cfg.text.layers
    self.split = min(self.injection.first_armable, L) if self.injection else L
    self.batch_size = batch_size
    self.prefix_bucket, self.suffix_bucket = prefix_bucket, suffix_bucket
    self._vision_cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._vision_cache_size = vision_cache_size

  @classmethod
  def from_folder(cls, path: str, *, dtype: str = "float32", min_pixels: int | None = None,
                  max_pixels: int | None = None, pre_resize: bool = True,
                  **kw) -> "PairScorer":
    """Weights, tokenizer and image processor of one HF Qwen2.5-VL / Qwen2-VL folder.

    pre_resize: images first resized as qwen_vl_utils does, as the released code loads them
    (False: the HF processor alone; see QwenImageProcessor).
    """
    # `transformers` is imported on use: it is slow to import and only this loader needs it.
    from transformers import AutoTokenizer

    model, params = hf.load_qwen2_5_vl(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    proc = QwenImageProcessor.from_folder(path, min_pixels=min_pixels, max_pixels=max_pixels,
                                          pre_resize=pre_resize)
    kw.setdefault("chat_template", QwenPrompter.folder_chat_template(path))
    return cls(model, params, tokenizer, proc, **kw)

  # ------------------------------------------------------------------ public API
  def score_text_to_image(self, caption: str, images: Sequence[np.ndarray]) -> ScoreResult:
    """One caption against its candidate images."""
    return self.score_pairs(list(images), [caption], [(i, 0) for i in range(len(images))])

  def score_image_to_text(self, image: np.ndarray, captions: Sequence[str]) -> ScoreResult:
    """One image against its candidate captions."""
    return self.score_pairs([image], list(captions), [(0, j) for j in range(len(captions))])

  def score_pairs(self, images: Sequence[np.ndarray], captions: Sequence[str],
                  pairs: Sequence[tuple[int, int]]) -> ScoreResult:
    """Scores (images[i], captions[j]) for every (i, j) in `pairs`, in that order."""
    pairs = [(int(i), int(j)) for i, j in pairs]
    n = len(pairs)
    p_true, ent, armed = np.zeros(n), np.zeros(n), np.full(n, -1)
    for i, j in pairs:
      if not (0 <= i < len(images) and 0 <= j < len(captions)):
        raise IndexError(f"pair {(i, j)} is out of range for {len(images)} images and "
                         f"{len(captions)} captions.")
    vis = {i: self.image_features(images[i]) for i in sorted({i for i, _ in pairs})}
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for k, (i, _) in enumerate(pairs):
      groups[i].append(k)
    order = list(groups)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      full = {k: self._pair_arrays(captions[pairs[k][1]], *vis[img])
              for img in chunk for k in groups[img]}
      cut = [self._shared_prefix([full[k][0] for k in groups[img]]) for img in chunk]
      cache = self._prefill([_slice(full[groups[img][0]], 0, c) for img, c in zip(chunk, cut)],
                            [vis[img][0] for img in chunk])
      rows = [(g, k) for g, img in enumerate(chunk) for k in groups[img]]
      for r in range(0, len(rows), self.batch_size):
        part = rows[r:r + self.batch_size]
        res = self._extend(cache, [g for g, _ in part],
                           [_slice(full[k], cut[g], None) for g, k in part],
                           [vis[chunk[g]][0] for g, _ in part])
        for (_, k), pt, e, a in zip(part, *res):
          p_true[k], ent[k], armed[k] = pt, e, a
    if self.floor_decimals is not None:
      f = 10.0 ** self.floor_decimals
      p_true = np.floor(p_true * f) / f
    return ScoreResult(p_true=p_true, entropy=ent, armed_layer=armed)

  def image_features(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(merged vision tokens [n, hidden], grid_thw [3]) of one image, cached by pixel hash."""
    key = image_key(np.asarray(image))
    hit = self._vision_cache.get(key)
    if hit is not None:
      self._vision_cache.move_to_end(key)
      return hit
    patches, grid = self.processor(image)
    v = self.cfg.vision
    n_pad = _bucket(patches.shape[0], 32 * v.merge_size ** 2)
    lay = qwen_layout.vision_layout(grid[None], merge=v.merge_size, windowed=v.windowed,
                                    window_size=v.window_size, patch_size=v.patch_size,
                                    pad_to=n_pad)
    padded = np.zeros((n_pad, patches.shape[1]), np.float32)
    padded[:patches.shape[0]] = patches
    out = self._run("vision", self.params, padded, lay.perm, lay.rot_hw, lay.full_seg,
                              lay.win_seg, lay.unperm)
    hit = (np.asarray(out[:lay.num_tokens]), grid)
    self._vision_cache[key] = hit
    while len(self._vision_cache) > self._vision_cache_size:
      self._vision_cache.popitem(last=False)
    return hit

  # ------------------------------------------------------------------ internals
  def _pair_arrays(self, caption: str, feats: np.ndarray, grid: np.ndarray):
    """(ids [T], feature index [T] (-1: text), rotary positions [3, T]) of one pair."""
    ids = self.prompter.pair_ids(caption, feats.shape[0])
    is_img = ids == self.cfg.image_token_id
    fidx = np.where(is_img, np.cumsum(is_img) - 1, -1).astype(np.int32)
    pos = qwen_layout.rope_index(ids[None], grid[None], image_token_id=self.cfg.image_token_id,
                                 merge=self.cfg.vision.merge_size)[:, 0]
    return ids, fidx, pos

  @staticmethod
  def _shared_prefix(seqs: list[np.ndarray]) -> int:
    """Longest common token prefix, leaving at least one token in every suffix."""
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
      diff = np.flatnonzero(s[:n] != first[:n])
      n = int(diff[0]) if diff.size else n
    return n

  def _pack(self, arrays, feats_list, batch: int, length: int):
    """Right-padded ids, feature index, positions, mask; feature rows [batch, F, hidden]."""
    ids = np.zeros((batch, length), np.int32)
    fidx = np.full((batch, length), -1, np.int32)
    pos = np.zeros((3, batch, length), np.int32)
    mask = np.zeros((batch, length), bool)
    used = [f[fi[fi >= 0]] if (fi >= 0).any() else f[:0] for (_, fi, _), f in
            zip(arrays, feats_list)]
    F = _bucket(max(u.shape[0] for u in used), 64) if any(u.shape[0] for u in used) else 1
    frows = np.zeros((batch, F, self.cfg.text.hidden), feats_list[0].dtype)
    for b, ((i, fi, p), u) in enumerate(zip(arrays, used)):
      t = len(i)
      ids[b, :t], pos[:, b, :t], mask[b, :t] = i, p, True
      if u.shape[0]:
        fidx[b, :t] = np.where(fi >= 0, np.cumsum(fi >= 0) - 1, -1)
        frows[b, :u.shape[0]] = u
    return (self._on_data(ids), self._on_data(fidx), self._on_data(pos, axis=1),
            self._on_data(mask), self._on_data(frows))

  def _batch(self, n: int) -> int:
    """Rows of a prefill / extend call: n padded to a multiple of the mesh's `data` size."""
    d = 1 if self.mesh is None else self.mesh.shape["data"]
    return -(-n // d) * d

  def _on_data(self, x: np.ndarray, axis: int = 0):
    """A batch input split over the mesh's `data` axis along `axis` (pairs run in parallel)."""
    if self.mesh is None:
      return x
    spec = jax.sharding.PartitionSpec(*([None] * axis), "data")
    return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

  def _prefill(self, prefixes, feats_list):
    G = self._batch(len(prefixes))
    P = _bucket(max(len(a[0]) for a in prefixes), self.prefix_bucket)
    ids, fidx, pos, mask, frows = self._pack(prefixes, feats_list, G, P)
    return self._run("prefill", self.params, ids, frows, fidx, pos, mask)

  def _extend(self, cache, groups, suffixes, feats_list):
    n = len(suffixes)
    B = self._batch(n)
    S = _bucket(max(len(a[0]) for a in suffixes), self.suffix_bucket)
    ids, fidx, pos, mask, frows = self._pack(suffixes, feats_list, B, S)
    last, rows = np.zeros(B, np.int32), np.zeros(B, np.int32)  # padding rows: group 0, unused
    last[:n] = [len(a[0]) - 1 for a in suffixes]
    rows[:n] = groups
    p, e, a = self._run("extend", self.params, cache, self._on_data(rows), ids, frows, fidx, pos,
                        mask, self._on_data(last))
    return np.asarray(p, np.float64)[:n], np.asarray(e, np.float64)[:n], np.asarray(a)[:n]

  def _run(self, name: str, *args):
    key = (self.mesh, self.axis_rules)
    if name == "vision":
      fn = _vision_fn(self.model, *key)
    elif name == "prefill":
      fn = _prefill_fn(self.model, self.split, *key)
    else:
      fn = _extend_fn(self.model, self.injection, self.split, self.prompter.true_id, *key)
    if self.mesh is None:
      return fn(*args)
    with mesh_lib.activate(self.mesh, self.axis_rules):
      return fn(*args)


def _embed(model: QwenVL, params, ids, frows, fidx):
  """Token embeddings with image-feature rows written over the image-token positions."""
  x = model.apply({"params": params}, ids, method="embed")
  f = jnp.take_along_axis(frows, jnp.maximum(fidx, 0)[..., None], axis=1).astype(x.dtype)
  return jnp.where((fidx >= 0)[..., None], f, x)


# Jitted steps, cached so that scorers of the same model (and mesh) share their compilations.
@functools.lru_cache(maxsize=16)
def _vision_fn(model: QwenVL, mesh, axis_rules):
  def vision(params, patches, perm, rot, fseg, wseg, unperm):
    return model.apply({"params": params}, patches, perm, rot, fseg, wseg, unperm,
                       method="image_features")
  return jax.jit(vision)


@functools.lru_cache(maxsize=16)
def _prefill_fn(model: QwenVL, split: int, mesh, axis_rules):
  """Prefix K/V of layers [0, split); with split < L also the hidden state entering `split`."""
  img_id = model.cfg.image_token_id

  def prefill(params, ids, frows, fidx, pos, mask):
    x = _embed(model, params, ids, frows, fidx)
    last = jnp.zeros((ids.shape[0],), jnp.int32)
    out = model.apply({"params": params}, x, pos, mask, last, stop=split, collect_kv=True,
                      method="decode")
    cache = {"k": out["kv"][0], "v": out["kv"][1], "mask": mask, "pos": pos}
    if split < model.cfg.text.layers:
      cache.update(hidden=out["hidden"], embeds=x, image=(ids == img_id) & mask)
    return cache
  return jax.jit(prefill)


@functools.lru_cache(maxsize=16)
def _extend_fn(model: QwenVL, inj: InjectionConfig | None, split: int, true_id: int, mesh,
               axis_rules):
  """Suffix rows against their group's cached prefix -> (P(True), entropy, armed layer)."""
  L = model.cfg.text.layers
  img_id = model.cfg.image_token_id

  def extend(params, cache, rows, ids, frows, fidx, pos, mask, last):
    x = _embed(model, params, ids, frows, fidx)
    pmask = cache["mask"][rows]
    kv = (cache["k"][:, rows], cache["v"][:, rows])
    out = model.apply({"params": params}, x, pos, mask, last, prefix_kv=kv,
                      prefix_mask_bp=pmask, stop=split, injection=inj,
                      output="last" if split == L else "hidden", method="decode")
    if split < L:  # from the first armable layer on, the whole sequence
      full_mask = jnp.concatenate([pmask, mask], 1)
      if inj.memory == "all":
        mem_mask = full_mask
      else:
        mem_mask = jnp.concatenate([cache["image"][rows], (ids == img_id) & mask], 1)
      xf = jnp.concatenate([cache["hidden"][rows], out["hidden"]], 1)
      out = model.apply(
          {"params": params}, xf, jnp.concatenate([cache["pos"][:, rows], pos], 2), full_mask,
          last + pmask.shape[1], start=split, injection=inj, arm_state=out["arm_state"],
          memory_bmd=jnp.concatenate([cache["embeds"][rows], x], 1), memory_mask_bm=mem_mask,
          output="last", method="decode")
    logits = out["logits"].astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = -jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
    return probs[:, true_id], entropy, out["arm_state"].armed_layer
  return jax.jit(extend)


def _slice(arrays, a, b):
  ids, fidx, pos = arrays
  return ids[a:b], fidx[a:b], pos[:, a:b]
