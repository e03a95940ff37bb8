"""Pointwise (image, caption) match scores from Qwen2.5-VL / Qwen2-VL: P("True") and entropy.

    scorer = PairScorer.from_folder("Qwen2.5-VL-7B-Instruct", dtype="bfloat16")
    res = scorer.score_text_to_image(caption, candidate_images)   # res.p_true, res.entropy: [K]
    res = scorer.score_image_to_text(image, candidate_captions)
    res = scorer.score_pairs(images, captions, pairs)             # any (image, caption) pairs

Each pair is scored as the reference does with one forward per pair: chat [image, "Does the
image match the caption: <{caption}>? Please directly output True or False"] + generation
prompt; softmax over the whole vocabulary of the last position's logits; p_true = its value at
the token "True" (floored to `floor_decimals`), entropy = -sum p log(p + 1e-10).

Same numbers, less work: each pair's prompt is cut into a prefix (system prompt, image, question
head: everything the caption cannot change) and a suffix (caption, question tail, generation
prompt). A prefix's K/V is computed once and kept in an LRU bounded by `prefix_cache_bytes`,
keyed by (image pixels hash, prefix tokens), so every caption retrieving a gallery image, in any
`score_pairs` call, reuses it; suffixes run as padded batches against it and only the last
position goes through lm_head. Vision features are cached per image (all gallery images by
default), so the vision tower runs once per image per run.

Re-injection stays exact. A first pass runs every layer over the suffix only, watching the
trigger without injecting: a pair whose trigger never fires is done. One that arms layer a has
prefix positions that depend on its caption from layer a on (the injected FFN mixes the caption
into every position), so a second pass recomputes layers [a, L) over prefix + suffix from the
cached prefix hidden state entering layer a (kept for every armable layer). Cost of a fired
pair: (L - a) / L of a full decoder forward, plus the suffix pass.
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
from retformer_jax.models.qwen_injection import ArmState, InjectionConfig
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.retllm import caches

# Captions whose first characters differ in kind: the prompt tokens common to all of them are the
# question head, which no caption changes.
_PROBES = ("a", "A", "0", '"', "'", "(", " ", "<", ".", "-", "\u00e9", "\n", "[")
# Batch axis of each cached prefix array; an entry's length axis has the same index.
_ENTRY_AXIS = {"k": 1, "v": 1, "pos": 1, "hidden": 1, "mask": 0, "embeds": 0, "image": 0}


@dataclasses.dataclass(frozen=True)
class ScoreResult:
  p_true: np.ndarray  # [n] float64: P("True"), floored if floor_decimals is not None
  entropy: np.ndarray  # [n] float64: entropy of the full-vocabulary softmax, last position
  armed_layer: np.ndarray  # [n] int: the re-injected layer (-1: none / injection off)


def _bucket(n: int, step: int) -> int:
  return max(step, -(-n // step) * step)


def image_key(image) -> str:
  """Hash of an image's pixels; a tuple of images (one prompt showing several) hashes them in
  order."""
  if isinstance(image, tuple):
    return hashlib.sha1(("|".join(image_key(p) for p in image) + f"#{len(image)}").encode()
                        ).hexdigest()
  a = np.ascontiguousarray(image)
  return hashlib.sha1(a.tobytes() + str((a.shape, a.dtype.str)).encode()).hexdigest()


class PairScorer:
  """P("True") scorer for (image, caption) pairs; see the module docstring.

  floor_decimals: P("True") floored to this many decimals (None: raw). injection: visual
  re-injection (None or enabled=False: off). batch_size: prompt prefixes per prefill and
  captions per extend call. vision_cache_size: images whose vision features stay cached (0: all
  images met, so each goes through the vision tower once per run). prefix_cache_bytes: bound of
  the prompt-prefix K/V cache kept across calls (0: prefixes are shared within a call only).
  mesh / axis_rules: shard the weights over a device mesh by their logical axes (None: one
  device). prefix_bucket / suffix_bucket: token lengths are padded to multiples of these so
  that few shapes get compiled. chat_template: overrides the tokenizer's (from_folder uses the
  processor's chat_template.json when the folder has one).

  `stats` counts the work done (vision calls, prefix hits and misses, tokens per pass), which
  the benchmark turns into FLOPs.
  """

  def __init__(self, model: QwenVL, params, tokenizer, image_processor: QwenImageProcessor, *,
               floor_decimals: int | None = 2, injection: InjectionConfig | None = None,
               batch_size: int = 8, vision_cache_size: int = 0,
               prefix_cache_bytes: int = 4 << 30, prefix_bucket: int = 64,
               suffix_bucket: int = 16, mesh: jax.sharding.Mesh | None = None,
               axis_rules: Sequence[tuple[str, str | None]] = (),
               chat_template: str | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if floor_decimals is not None and floor_decimals < 0:
      raise ValueError(f"floor_decimals={floor_decimals}: use None (no flooring) or >= 0.")
    if vision_cache_size < 0 or prefix_cache_bytes < 0:
      raise ValueError(f"vision_cache_size={vision_cache_size}, prefix_cache_bytes="
                       f"{prefix_cache_bytes}: use >= 0 (vision_cache_size 0 = every image).")
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
    L = self.cfg.text.layers
    inj = injection if injection is not None and injection.enabled else None
    # Layers that an armed trigger can inject: a = l + 1 for layer_lo < l < layer_hi, a < L.
    self.armable = (range(inj.first_armable, min(inj.layer_hi, L - 1) + 1) if inj else range(0))
    self.injection = inj
    self.batch_size = batch_size
    self.prefix_bucket, self.suffix_bucket = prefix_bucket, suffix_bucket
    self._vision_cache = caches.LRU(max_items=vision_cache_size or None)
    self._grids: dict[str, np.ndarray] = {}  # image key -> grid_thw (a few bytes per image)
    self._prefix_cache = caches.LRU(max_bytes=prefix_cache_bytes)
    self._head: np.ndarray | None = None
    self.stats: collections.Counter = collections.Counter()

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

  def score_pairs(self, images: Sequence[np.ndarray], captions: Sequence,
                  pairs: Sequence[tuple[int, int]], prompter=None) -> ScoreResult:
    """Scores (images[i], captions[j]) for every (i, j) in `pairs`, in that order.

    prompter: builds each pair's prompt instead of the match question (retllm.prompts:
    mixed query/candidate items); then captions[j] is what it reads, and images[i] may be a
    tuple of images (shown in order; () = none).
    """
    prompter = prompter or self.prompter
    pairs = [(int(i), int(j)) for i, j in pairs]
    n = len(pairs)
    p_true, ent, armed = np.zeros(n), np.zeros(n), np.full(n, -1)
    for i, j in pairs:
      if not (0 <= i < len(images) and 0 <= j < len(captions)):
        raise IndexError(f"pair {(i, j)} is out of range for {len(images)} images and "
                         f"{len(captions)} captions.")
    keys = {i: image_key(images[i]) for i in sorted({i for i, _ in pairs})}
    grids = {i: self._grid(keys[i], images[i]) for i in keys}
    full, cuts, groups = {}, {}, {}  # groups: prefix key -> pair indices, in first-seen order
    for k, (i, j) in enumerate(pairs):
      full[k] = self._pair_arrays(captions[j], grids[i], prompter)
      cut = self._prefix_len(full[k][0], prompter)
      pkey = (keys[i], hashlib.sha1(full[k][0][:cut].tobytes()).hexdigest())
      groups.setdefault(pkey, []).append(k)
      cuts[pkey] = cut
    order = list(groups)
    for start in range(0, len(order), self.batch_size):
      window = order[start:start + self.batch_size]
      entries = self._prefixes(window, {pk: full[groups[pk][0]] for pk in window}, cuts,
                               {pk: images[pairs[groups[pk][0]][0]] for pk in window})
      rows = [(g, k) for g, pk in enumerate(window) for k in groups[pk]]
      suffix_feats = {pk: self._suffix_features(pk[0], images[pairs[groups[pk][0]][0]],
                                                full[groups[pk][0]][1][cuts[pk]:])
                      for pk in window}
      for r in range(0, len(rows), self.batch_size):
        part = rows[r:r + self.batch_size]
        res = self._extend(entries, [g for g, _ in part],
                           [_slice(full[k], cuts[window[g]], None) for g, k in part],
                           [suffix_feats[window[g]] for g, _ in part])
        for (_, k), pt, e, a in zip(part, *res):
          p_true[k], ent[k], armed[k] = pt, e, a
    self.stats["pairs"] += n
    if self.floor_decimals is not None:
      f = 10.0 ** self.floor_decimals
      p_true = np.floor(p_true * f) / f
    return ScoreResult(p_true=p_true, entropy=ent, armed_layer=armed)

  def image_features(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(merged vision tokens [n, hidden], grid_thw [3]) of one image, cached by pixel hash."""
    return self._features(image_key(np.asarray(image)), image)

  def clear_caches(self) -> None:
    """Drops cached vision features and prompt prefixes (the next calls recompute them)."""
    self._vision_cache.clear()
    self._prefix_cache.clear()

  # ------------------------------------------------------------------ internals
  def _features(self, key: str, image) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(image, tuple):  # several images in one prompt: their tokens in order
      parts = [self._features(image_key(p), p) for p in image]
      grid = np.stack([g for _, g in parts]) if parts else np.zeros((0, 3), np.int64)
      self._grids[key] = grid
      feats = [f for f, _ in parts] or [np.zeros((0, self.cfg.text.hidden),
                                                 np.dtype(self.model.dtype))]
      return np.concatenate(feats), grid
    hit = self._vision_cache.get(key)
    if hit is not None:
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
    self.stats["vision_calls"] += 1
    self.stats["vision_patches"] += int(patches.shape[0])
    self._grids[key] = grid
    self._vision_cache.put(key, hit)
    return hit

  def _grid(self, key: str, image) -> np.ndarray:
    grid = self._grids.get(key)
    return grid if grid is not None else self._features(key, image)[1]

  def _num_image_tokens(self, grid: np.ndarray) -> int:
    return int(np.prod(grid)) // self.cfg.vision.merge_size ** 2

  def _pair_arrays(self, caption, grid: np.ndarray, prompter):
    """(ids [T], feature index [T] (-1: text), rotary positions [3, T]) of one pair."""
    if prompter is self.prompter:
      ids = prompter.pair_ids(caption, self._num_image_tokens(grid))
    else:  # one token count per image shown
      ids = prompter.pair_ids(caption, [self._num_image_tokens(g) for g in grid.reshape(-1, 3)])
    is_img = ids == self.cfg.image_token_id
    fidx = np.where(is_img, np.cumsum(is_img) - 1, -1).astype(np.int32)
    pos = qwen_layout.rope_index(ids[None], grid[None], image_token_id=self.cfg.image_token_id,
                                 merge=self.cfg.vision.merge_size)[:, 0]
    return ids, fidx, pos

  def _prefix_len(self, ids: np.ndarray, prompter) -> int:
    """Tokens before the caption: the prompt's common head (with this image's token count),
    leaving at least one token in the suffix. Any cut is exact (the cache is keyed by the
    prefix tokens); this one makes every caption of an image share it."""
    img = self.cfg.image_token_id
    if prompter is not self.prompter:
      return max(1, min(prompter.prefix_len(ids, img), len(ids) - 1))
    if self._head is None:
      heads = [self.prompter.pair_ids(p, 1) for p in _PROBES]
      self._head = heads[0][:_common_len(heads)]
    at = np.flatnonzero(self._head == img)
    n_img = int((ids == img).sum())
    head = self._head if at.size != 1 else np.concatenate(
        [self._head[:at[0]], np.full(n_img, img, np.int32), self._head[at[0] + 1:]])
    return min(_common_len([ids, head]), len(ids) - 1)

  def _suffix_features(self, key: str, image, suffix_fidx: np.ndarray) -> np.ndarray:
    """Feature rows a suffix needs: none unless the cut fell inside the image run."""
    if (suffix_fidx >= 0).any():
      return self._features(key, image)[0]
    return np.zeros((0, self.cfg.text.hidden), np.dtype(self.model.dtype))

  def _prefixes(self, window, arrays, cuts, images) -> list[dict]:
    """Cached prefix of every key in `window`, prefilling (and caching) the missing ones."""
    entries = {pk: self._prefix_cache.get(pk) for pk in window}
    missing = [pk for pk in window if entries[pk] is None]
    self.stats["prefix_hits"] += len(window) - len(missing)
    self.stats["prefix_misses"] += len(missing)
    if missing:
      made = self._prefill([_slice(arrays[pk], 0, cuts[pk]) for pk in missing],
                           [self._features(pk[0], images[pk])[0] for pk in missing])
      for pk, entry in zip(missing, made):
        entries[pk] = entry
        self._prefix_cache.put(pk, entry)
        self.stats["prefill_tokens"] += cuts[pk]
    return [entries[pk] for pk in window]

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

  def _prefill(self, prefixes, feats_list) -> list[dict]:
    """One cache entry per prefix (device arrays, length padded to prefix_bucket)."""
    G = self._batch(len(prefixes))
    P = _bucket(max(len(a[0]) for a in prefixes), self.prefix_bucket)
    ids, fidx, pos, mask, frows = self._pack(prefixes, feats_list, G, P)
    batch = self._run("prefill", self.params, ids, frows, fidx, pos, mask)
    out = []
    for g, a in enumerate(prefixes):
      own = _bucket(len(a[0]), self.prefix_bucket)
      out.append({name: jax.lax.index_in_dim(x, g, _ENTRY_AXIS[name], keepdims=False)
                  [(slice(None),) * _ENTRY_AXIS[name] + (slice(0, own),)]
                  for name, x in batch.items()})
    return out

  def _stack(self, entries: list[dict]) -> dict:
    """Entries as one batch: padded to a common length, count padded to a power of two."""
    P = max(e["mask"].shape[0] for e in entries)
    G = self._batch(1 << (len(entries) - 1).bit_length())
    padded = entries + [entries[0]] * (G - len(entries))
    out = {}
    for name, ax in _ENTRY_AXIS.items():
      if name not in entries[0]:
        continue
      parts = []
      for e in padded:
        x = e[name]
        extra = P - x.shape[ax]
        if extra:
          x = jnp.pad(x, [(0, extra if d == ax else 0) for d in range(x.ndim)])
        parts.append(x)
      out[name] = jnp.stack(parts, axis=ax)
    return out

  def _extend(self, entries, groups, suffixes, feats_list):
    """Suffix rows against their cached prefixes; pairs whose trigger fired rerun from there."""
    n = len(suffixes)
    B = self._batch(1 << (n - 1).bit_length())
    S = _bucket(max(len(a[0]) for a in suffixes), self.suffix_bucket)
    cache = self._stack(entries)
    ids, fidx, pos, mask, frows = self._pack(suffixes, feats_list, B, S)
    last, rows = np.zeros(B, np.int32), np.zeros(B, np.int32)  # padding rows: group 0, unused
    last[:n] = [len(a[0]) - 1 for a in suffixes]
    rows[:n] = groups
    p, e, a, hid = self._run("extend", self.params, cache, self._on_data(rows), ids, frows, fidx,
                             pos, mask, self._on_data(last))
    p, e, a = np.asarray(p, np.float64)[:n], np.asarray(e, np.float64)[:n], np.asarray(a)[:n]
    self.stats["suffix_tokens"] += sum(len(x[0]) for x in suffixes)
    self.stats["extend_rows"] += n
    for layer in sorted(set(a[a >= 0].tolist())):
      sel = np.flatnonzero(a == layer)
      p[sel], e[sel] = self._reinject(cache, layer, hid, sel, [groups[i] for i in sel],
                                      [suffixes[i] for i in sel], [feats_list[i] for i in sel], S)
      plen = [int(entries[groups[i]]["mask"].sum()) for i in sel]
      self.stats["reinject_rows"] += len(sel)
      self.stats["reinject_token_layers"] += sum(
          (pl + len(suffixes[i][0])) * (self.cfg.text.layers - layer) for pl, i in zip(plen, sel))
    return p, e, a

  def _reinject(self, cache, layer, hid, sel, groups, suffixes, feats_list, S):
    """Layers [layer, L) over prefix + suffix for the rows that armed `layer`."""
    n = len(sel)
    B = self._batch(1 << (n - 1).bit_length())
    ids, fidx, pos, mask, frows = self._pack(suffixes, feats_list, B, S)
    last, rows, take = (np.zeros(B, np.int32) for _ in range(3))
    last[:n] = [len(a[0]) - 1 for a in suffixes]
    rows[:n] = groups
    take[:n] = sel
    h = hid[layer - self.armable.start][jnp.asarray(take)]
    p, e = self._run("reinject", self.params, layer, cache, self._on_data(rows), h, ids, frows,
                     fidx, pos, mask, self._on_data(last))
    return np.asarray(p, np.float64)[:n], np.asarray(e, np.float64)[:n]

  def _run(self, name: str, *args):
    key = (self.mesh, self.axis_rules)
    armable = (self.armable.start, self.armable.stop)
    if name == "vision":
      fn = _vision_fn(self.model, *key)
    elif name == "prefill":
      fn = _prefill_fn(self.model, armable, *key)
    elif name == "extend":
      fn = _extend_fn(self.model, self.injection, armable, self.prompter.true_id, *key)
    else:
      fn = _reinject_fn(self.model, self.injection, args[1], armable, self.prompter.true_id, *key)
      args = args[:1] + args[2:]
    if self.mesh is None:
      return fn(*args)
    with mesh_lib.activate(self.mesh, self.axis_rules):
      return fn(*args)


def _common_len(seqs: Sequence[np.ndarray]) -> int:
  """Length of the longest common prefix of token sequences."""
  first = seqs[0]
  n = min(len(s) for s in seqs)
  for s in seqs[1:]:
    diff = np.flatnonzero(s[:n] != first[:n])
    n = int(diff[0]) if diff.size else n
  return n


def _embed(model: QwenVL, params, ids, frows, fidx):
  """Token embeddings with image-feature rows written over the image-token positions."""
  x = model.apply({"params": params}, ids, method="embed")
  f = jnp.take_along_axis(frows, jnp.maximum(fidx, 0)[..., None], axis=1).astype(x.dtype)
  return jnp.where((fidx >= 0)[..., None], f, x)


def _probs(logits, true_id: int):
  """P(True) and entropy of the full-vocabulary softmax."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probs[:, true_id], -jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)


# Jitted steps, cached so that scorers of the same model (and mesh) share their compilations.
@functools.lru_cache(maxsize=16)
def _vision_fn(model: QwenVL, mesh, axis_rules):
  def vision(params, patches, perm, rot, fseg, wseg, unperm):
    return model.apply({"params": params}, patches, perm, rot, fseg, wseg, unperm,
                       method="image_features")
  return jax.jit(vision)


@functools.lru_cache(maxsize=16)
def _prefill_fn(model: QwenVL, armable: tuple[int, int], mesh, axis_rules):
  """Prefix K/V of every layer; with armable layers [lo, hi) also the hidden state entering
  each of them, the input embeddings and the image-token mask (what a rerun from there needs)."""
  img_id = model.cfg.image_token_id
  lo, hi = armable

  def prefill(params, ids, frows, fidx, pos, mask):
    x = _embed(model, params, ids, frows, fidx)
    last = jnp.zeros((ids.shape[0],), jnp.int32)
    out = model.apply({"params": params}, x, pos, mask, last, collect_kv=True,
                      collect_hidden=hi > lo, method="decode")
    cache = {"k": out["kv"][0], "v": out["kv"][1], "mask": mask, "pos": pos}
    if hi > lo:
      cache.update(hidden=out["hiddens"][lo:hi], embeds=x, image=(ids == img_id) & mask)
    return cache
  return jax.jit(prefill)


@functools.lru_cache(maxsize=16)
def _extend_fn(model: QwenVL, inj: InjectionConfig | None, armable: tuple[int, int],
               true_id: int, mesh, axis_rules):
  """Suffix rows against their cached prefix, every layer, trigger watched but nothing
  injected -> (P(True), entropy, armed layer, suffix hidden entering each armable layer)."""
  lo, hi = armable

  def extend(params, cache, rows, ids, frows, fidx, pos, mask, last):
    x = _embed(model, params, ids, frows, fidx)
    kv = (cache["k"][:, rows], cache["v"][:, rows])
    out = model.apply({"params": params}, x, pos, mask, last, prefix_kv=kv,
                      prefix_mask_bp=cache["mask"][rows], injection=inj, trigger_only=True,
                      collect_hidden=hi > lo, output="last", method="decode")
    p, e = _probs(out["logits"], true_id)
    hid = out["hiddens"][lo:hi] if hi > lo else None
    return p, e, out["arm_state"].armed_layer, hid
  return jax.jit(extend)


@functools.lru_cache(maxsize=64)
def _reinject_fn(model: QwenVL, inj: InjectionConfig, layer: int, armable: tuple[int, int],
                 true_id: int, mesh, axis_rules):
  """Rows that armed `layer`: layers [layer, L) over prefix + suffix, injecting at `layer`."""
  img_id = model.cfg.image_token_id
  at = layer - armable[0]

  def reinject(params, cache, rows, h_suffix, ids, frows, fidx, pos, mask, last):
    x = _embed(model, params, ids, frows, fidx)
    pmask = cache["mask"][rows]
    full_mask = jnp.concatenate([pmask, mask], 1)
    if inj.memory == "all":
      mem_mask = full_mask
    else:
      mem_mask = jnp.concatenate([cache["image"][rows], (ids == img_id) & mask], 1)
    B = ids.shape[0]
    state = ArmState(jnp.ones((B,), bool), jnp.ones((B,), bool),
                     jnp.full((B,), layer, jnp.int32))
    out = model.apply(
        {"params": params}, jnp.concatenate([cache["hidden"][at][rows], h_suffix], 1),
        jnp.concatenate([cache["pos"][:, rows], pos], 2), full_mask, last + pmask.shape[1],
        start=layer, injection=inj, arm_state=state,
        memory_bmd=jnp.concatenate([cache["embeds"][rows], x], 1), memory_mask_bm=mem_mask,
        output="last", method="decode")
    return _probs(out["logits"], true_id)
  return jax.jit(reinject)


def _slice(arrays, a, b):
  ids, fidx, pos = arrays
  return ids[a:b], fidx[a:b], pos[:, a:b]
