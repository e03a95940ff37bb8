"""Host-side (NumPy) index bookkeeping for Qwen2-VL / Qwen2.5-VL, done once per input shape.

The HF model computes these with data-dependent loops inside its forward; here they are plain
NumPy so that the jitted parts see static shapes:

- `vision_layout`: patch order for window attention, 2-D rotary positions, attention segment
  ids (one per image for full attention, one per window for windowed blocks), and the
  permutation that puts merged tokens back in raster order.
- `rope_index`: the decoder's 3-D (temporal, height, width) position ids, exactly as
  transformers' `get_rope_index` builds them for text, image tokens and padding.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np


@dataclasses.dataclass(frozen=True)
class VisionLayout:
  perm: np.ndarray  # [Np] int32: patch row feeding each position of the permuted sequence
  rot_hw: np.ndarray  # [Np, 2] int32: (row, col) of each permuted position, for 2-D rotary
  full_seg: np.ndarray  # [Np] int32: image id (padding: -1), for full-attention blocks
  win_seg: np.ndarray  # [Np] int32: window id (padding: -1), for windowed blocks
  unperm: np.ndarray  # [Np / merge**2] int32: merged-token order back to raster order
  num_tokens: int  # valid merged tokens (the rest of the output is padding)


def _check_grid(grid_thw: np.ndarray, merge: int) -> np.ndarray:
  grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
  if (grid <= 0).any() or (grid[:, 1:] % merge).any():
    raise ValueError(f"image_grid_thw {grid.tolist()}: every h and w must be a positive multiple "
                     f"of spatial_merge_size={merge}; pass the grid the image processor returned.")
  return grid


def _window_index(grid: np.ndarray, merge: int, window: int) -> tuple[np.ndarray, np.ndarray]:
  """Merged-token order for windowed attention and the window id of each merged token."""
  order, window_ids = [], []
  base, next_window = 0, 0
  for t, h, w in grid.tolist():
    lh, lw = h // merge, w // merge
    idx = np.arange(t * lh * lw).reshape(t, lh, lw)
    pad_h, pad_w = window - lh % window, window - lw % window
    nh, nw = (lh + pad_h) // window, (lw + pad_w) // window
    padded = np.full((t, lh + pad_h, lw + pad_w), -1, np.int64)
    padded[:, :lh, :lw] = idx
    blocks = padded.reshape(t, nh, window, nw, window).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(t * nh * nw, window * window)
    for blk in blocks:
      kept = blk[blk >= 0]
      if kept.size:
        order.append(kept + base)
        window_ids.append(np.full(kept.size, next_window))
        next_window += 1
    base += t * lh * lw
  return np.concatenate(order), np.concatenate(window_ids)


def _rotary_rows_cols(grid: np.ndarray, merge: int) -> np.ndarray:
  """(row, col) of every patch in the processor's block-major (merge x merge) order."""
  out = []
  for t, h, w in grid.tolist():
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    out.append(np.tile(np.stack([rows, cols], -1), (t, 1)))
  return np.concatenate(out)


def vision_layout(grid_thw, *, merge: int, windowed: bool, window_size: int = 0,
                  patch_size: int = 14, pad_to: int | None = None) -> VisionLayout:
  """Layout of the concatenated patches of all images in `grid_thw` ([n, 3] = t, h, w)."""
  grid = _check_grid(grid_thw, merge)
  unit = merge * merge
  n = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
  n_pad = n if pad_to is None else int(pad_to)
  if n_pad < n or n_pad % unit:
    raise ValueError(f"pad_to={pad_to} must be >= the {n} patches and a multiple of {unit}.")
  frame_sizes = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])
  full_seg = np.repeat(np.arange(len(frame_sizes)), frame_sizes)
  if windowed:
    window = window_size // merge // patch_size
    if window < 1:
      raise ValueError(f"window_size={window_size} is smaller than one merged patch "
                       f"({merge * patch_size} px).")
    merged_order, merged_win = _window_index(grid, merge, window)
  else:
    merged_order = np.arange(n // unit)
    merged_win = np.repeat(np.arange(len(frame_sizes)), frame_sizes // unit)
  perm = (merged_order[:, None] * unit + np.arange(unit)).reshape(-1)
  win_seg = np.repeat(merged_win, unit)
  if not windowed:
    win_seg = full_seg
  rot = _rotary_rows_cols(grid, merge)[perm]
  full_seg = full_seg[perm]
  unperm = np.argsort(merged_order)
  extra = n_pad - n
  pad_ids = np.arange(n, n_pad)
  return VisionLayout(
      perm=np.concatenate([perm, pad_ids]).astype(np.int32),
      rot_hw=np.concatenate([rot, np.zeros((extra, 2), np.int64)]).astype(np.int32),
      full_seg=np.concatenate([full_seg, np.full(extra, -1)]).astype(np.int32),
      win_seg=np.concatenate([win_seg, np.full(extra, -1)]).astype(np.int32),
      unperm=np.concatenate([unperm, np.arange(n // unit, n_pad // unit)]).astype(np.int32),
      num_tokens=n // unit)


def rope_index(input_ids, image_grid_thw, attention_mask=None, *, image_token_id: int,
               merge: int, start: np.ndarray | None = None) -> np.ndarray:
  """[3, B, T] int32 multimodal rotary positions, as HF `get_rope_index` builds them.

  Valid text tokens count up by one; each run of image tokens gets (t, h, w) grid positions
  offset by the running position, which then advances by max(h, w) / merge. Padding
  (attention_mask == 0) gets position 0. Images are taken from `image_grid_thw` in order over
  the whole batch. `start` ([B]) offsets each row, for a sequence that continues a cached prefix.
  """
  ids = np.asarray(input_ids)
  b, t = ids.shape
  mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask) > 0
  grids = iter(np.zeros((0, 3), np.int64) if image_grid_thw is None
               else np.asarray(image_grid_thw, np.int64).reshape(-1, 3))
  out = np.zeros((3, b, t), np.int64)
  for row in range(b):
    kinds = (ids[row][mask[row]] == image_token_id).astype(np.int64)
    pos = 0 if start is None else int(start[row])
    pieces = []
    for kind, group in itertools.groupby(kinds.tolist()):
      length = len(list(group))
      if kind == 0:
        pieces.append(np.broadcast_to(np.arange(length) + pos, (3, length)))
        pos += length
      else:
        try:
          gt, gh, gw = next(grids)
        except StopIteration:
          raise ValueError("input_ids hold more image-token runs than image_grid_thw has rows; "
                           "give one grid row per image, in order.") from None
        lh, lw = gh // merge, gw // merge
        if gt * lh * lw != length:
          raise ValueError(f"An image run of {length} tokens does not match its grid "
                           f"{[int(gt), int(gh), int(gw)]} (needs {gt * lh * lw} tokens).")
        tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(lh), np.arange(lw), indexing="ij")
        pieces.append(np.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]) + pos)
        pos += max(gh, gw) // merge
    if pieces:
      out[:, row, mask[row]] = np.concatenate(pieces, axis=1)
  if next(grids, None) is not None:
    raise ValueError("image_grid_thw has more rows than there are images in input_ids.")
  return out.astype(np.int32)
