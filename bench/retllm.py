"""RetLLM fine-stage throughput on a Flickr30k-shaped workload: ours vs the reference's way and
HF batched, in one run, on a Qwen2.5-VL scaled down from 7B with its FLOP shares kept.

  python bench/retllm.py [--scale 8 --images 12 --k 5]
  python bench/retllm.py --replay_only   # the full-size prefix replay alone (seconds, no model)

Model: every width of Qwen2.5-VL-7B divided by --scale (text 3584, MLP 18944, vision 1280 /
3420, vocabulary 152,064), all 28 decoder and 32 vision layers, 7B's head ratios; random
weights built by transformers, written with save_pretrained, read by ours through
hf.load_qwen2_5_vl. Its FLOP shares (vision tower, decoder layers, attention, lm_head) per
reference pair are printed beside 7B's.

Workload: N images of Flickr sizes (about 256 visual tokens each) with 5 captions each; text->
image: every caption against K = 5 candidates, its own image and 4 others drawn at random, so
each image sits in about 25 lists, as in Flickr30k's CLIP top-5; image->text: every image
against 5 captions (2 of its own). Ours scores in chunks, one `score_pairs` call per chunk as
the pipeline does (t2i: --chunk * K pairs in `pipeline.pair_order`, by candidate image; i2t:
--chunk image queries), with the prefix cache budget of the default config scaled by 1/scale^2
(the K/V shrinks with the widths).

Baselines, same weights, same run, timed in two halves around ours:
- reference: the released code's way, one pair per forward at batch 1, the whole prompt, no
  cache, logits of every position (it reuses nothing, so its per-pair time is sampled on
  --ref_pairs pairs);
- HF batched: pairs left-padded in batches of 8, no cache, logits of the last position only
  (sampled on --hf_batches batches).
Ours runs with injection on in two regimes: never firing (tau above the entropy's range) and
firing on every pair (tau = 0). transformers has no injection, so both speedups divide the
reference's plain time: its injected forwards would only cost more.

The lm_head row of "True" is calibrated so that P("True") lands near 0.5, where score
differences show (random weights give ~1/vocab). Prints a table, then as its last line one JSON
object; `projected_7b_speedup` is the FLOP ratio reference / ours at 7B sizes from the reuse
counts this run achieved (vision calls, prefix tokens, suffix tokens, rerun layers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIN_PIXELS, MAX_PIXELS = 256 * 28 * 28, 512 * 28 * 28
# Flickr30k-like (height, width): 256 to 270 merged visual tokens after smart_resize.
SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 500), (500, 400))
WORDS = ("a", "dog", "red", "ball", "two", "people", "walking", "on", "the", "beach", "with",
         "sunset", "child", "bike", "street", "city", "near", "green", "tree", "playing", "man",
         "woman", "in", "shirt", "blue", "black", "white", "sitting", "standing", "water")
Q7B = dict(hidden=3584, mlp=18944, layers=28, heads=28, kv_heads=4, vocab=152064,
           v_hidden=1280, v_mlp=3420, v_layers=32, v_heads=16, v_full=4, window=64)
DEFAULT_PREFIX_BYTES = 4 << 30  # configs/common.py retllm.prefix_cache_bytes


def scaled_shape(scale: int) -> dict:
  """7B's widths / scale; heads keep 7B's head_dim when the width allows (the text stays 28:4)."""
  s = dict(Q7B)
  s.update(hidden=Q7B["hidden"] // scale, mlp=Q7B["mlp"] // scale,
           vocab=Q7B["vocab"] // scale, v_hidden=Q7B["v_hidden"] // scale,
           v_mlp=Q7B["v_mlp"] // scale)
  s["heads"], s["kv_heads"] = 7, 1  # head_dim hidden/7 (64 at scale 8), 7 query heads per KV
  s["v_heads"] = max(1, s["v_hidden"] // 80)  # 7B's vision head_dim 80
  return s


# ------------------------------------------------------------------ FLOP model
def costs(s: dict) -> dict:
  """FLOPs per token / patch of each part (2 per multiply-add)."""
  D, F, L, H = s["hidden"], s["mlp"], s["layers"], s["heads"]
  E = D // H
  kv = s["kv_heads"] * E
  Dv, Fv = s["v_hidden"], s["v_mlp"]
  return dict(
      dec=2 * L * (2 * D * D + 2 * D * kv + 3 * D * F),  # per token, all layers
      dec_layer=2 * (2 * D * D + 2 * D * kv + 3 * D * F),
      attn=4 * L * D,  # x (query tokens x keys)
      attn_layer=4 * D,
      lm=2 * D * s["vocab"],  # per token
      vis=2 * s["v_layers"] * (4 * Dv * Dv + 3 * Dv * Fv) + 2 * (16 * Dv * Dv + 4 * Dv * D) / 4,
      vis_attn_win=4 * (s["v_layers"] - s["v_full"]) * s["window"] * Dv,  # per patch
      vis_attn_full=4 * s["v_full"] * Dv)  # x patches^2


def reference_pair(c: dict, patches: float, tokens: float, last_only: bool = False) -> dict:
  """FLOPs of one full forward: vision, decoder layers, attention, lm_head."""
  return dict(vision=patches * (c["vis"] + c["vis_attn_win"]) + patches ** 2 * c["vis_attn_full"],
              decoder=tokens * c["dec"], attention=tokens ** 2 * c["attn"],
              lm_head=(1 if last_only else tokens) * c["lm"])


def prefix_entry_bytes(s: dict, tokens: int, dtype_bytes: int, armable: int = 10) -> int:
  """Bytes of one cached prompt prefix with injection on: K/V of every layer, the hidden state
  entering each armable layer (7..16 by default), the input embeddings."""
  kv = s["layers"] * 2 * s["kv_heads"] * (s["hidden"] // s["heads"])
  return tokens * dtype_bytes * (kv + armable * s["hidden"] + s["hidden"])


def simulate_prefixes(n_images: int, k: int, chunk: int, entries: int, batch_size: int = 8,
                      seed: int = 0, coarse: str = "embedding") -> dict:
  """Prefix computations per image of a full t2i + i2t run with an LRU of `entries` prefixes,
  chunks in pipeline order (`work_chunks`): the scorer's grouping replayed without a model."""
  from retformer_jax.retllm import caches

  w = workload_lists(seed, n_images, k, coarse=coarse)
  lru, made, needed = caches.LRU(max_items=entries), 0, 0
  made_by = {}
  for direction in ("t2i", "i2t"):
    before = made
    for ids in work_chunks(w[direction], direction, chunk):
      if direction == "t2i":  # pair ids q * k + slot: the chunk's images, grouped
        imgs = list(dict.fromkeys(w["t2i"][ids // k, ids % k].tolist()))
      else:
        imgs = ids.tolist()
      for b in range(0, len(imgs), batch_size):  # a window's prefixes are held while used
        window = imgs[b:b + batch_size]
        needed += len(window)
        for i in window:
          if lru.get(i) is None:
            made += 1
            lru.put(i, True, nbytes=0)
    made_by[direction] = (made - before) / n_images
  return {"prefixes_per_image": made / n_images, "prefix_uses": needed,
          "t2i_prefixes_per_image": made_by["t2i"], "i2t_prefixes_per_image": made_by["i2t"]}


def _ceil64(n: int) -> int:
  return -(-n // 64) * 64


def shares(parts: dict) -> dict:
  total = sum(parts.values())
  return {k: v / total for k, v in parts.items()}


def ours_flops(c: dict, st: dict, layers: int, injection: bool) -> float:
  """FLOPs of what the scorer did, from its counters (means where lengths vary)."""
  pre = st["prefill_tokens"] / max(st["prefix_misses"], 1)
  suf = st["suffix_tokens"] / max(st["extend_rows"], 1)
  patches = st["vision_patches"] / max(st["vision_calls"], 1)
  f = st["vision_calls"] * (patches * (c["vis"] + c["vis_attn_win"]) +
                            patches ** 2 * c["vis_attn_full"])
  f += st["prefix_misses"] * (pre * c["dec"] + pre ** 2 * c["attn"])
  f += st["extend_rows"] * (suf * c["dec"] + suf * (pre + suf) * c["attn"] + c["lm"])
  if injection:  # the trigger's lm_head row after every layer, first pass and rerun
    f += st["extend_rows"] * layers * c["lm"]
  rl = st["reinject_token_layers"]  # sum over rerun rows of (P + S) * layers rerun
  f += rl * (c["dec_layer"] + (pre + suf) * c["attn_layer"])
  f += st["reinject_rows"] * c["lm"] * (1 + (rl / max(st["reinject_rows"], 1)) / (pre + suf))
  return f


DEFAULT_CHUNK = 64  # configs/common.py retllm.chunk_size


def full_size_replay(k: int, chunk: int = DEFAULT_CHUNK) -> dict:
  """Flickr30k (1k images) and COCO 5k at 7B: prefixes per image replayed in the pipeline's
  chunks with the default budget and with the whole gallery cached; FLOPs vs the reference."""
  c7 = costs(Q7B)
  full = {}
  for name, n_img, v in (("flickr30k", 1000, 256), ("coco5k", 5000, 391)):
    pre, suf = v + 24, 28  # Qwen tokens before the caption / from it on (suffix padded: 32)
    for label, entries in (("default", DEFAULT_PREFIX_BYTES // prefix_entry_bytes(
        Q7B, _ceil64(pre), 2)), ("gallery", n_img)):
      sim = simulate_prefixes(n_img, k, chunk, entries)
      pairs_n = 2 * 5 * n_img * k // 2 + n_img * k
      sim_st = {"prefix_misses": sim["prefixes_per_image"] * n_img,
                "prefill_tokens": sim["prefixes_per_image"] * n_img * pre,
                "extend_rows": pairs_n, "suffix_tokens": pairs_n * 32,
                "vision_calls": n_img, "vision_patches": 4 * v * n_img,
                "reinject_token_layers": 0, "reinject_rows": 0}
      ref_n = pairs_n * sum(reference_pair(c7, 4 * v, pre + suf).values())
      ours_n = ours_flops(c7, sim_st, Q7B["layers"], True)
      full[f"{name}_{label}"] = {
          "entries": int(entries), "prefixes_per_image": sim["prefixes_per_image"],
          "t2i_prefixes_per_image": sim["t2i_prefixes_per_image"],
          "i2t_prefixes_per_image": sim["i2t_prefixes_per_image"], "pairs": pairs_n,
          "reference_pflop": ref_n / 1e15, "ours_pflop": ours_n / 1e15, "speedup": ref_n / ours_n}
  return full


def print_replay(full: dict) -> None:
  print(f"full-size runs at 7B FLOPs (reuse replayed, chunk_size {DEFAULT_CHUNK}; injection not "
        "firing):")
  for key, f in full.items():
    print(f"  {key:18s} LRU {f['entries']:5d} prefixes: {f['prefixes_per_image']:5.2f} per image "
          f"(t2i {f['t2i_prefixes_per_image']:.2f} + i2t {f['i2t_prefixes_per_image']:.2f}),"
          f" {f['pairs']} pairs, reference {f['reference_pflop']:7.1f} PFLOP, ours "
          f"{f['ours_pflop']:6.1f} PFLOP, {f['speedup']:5.1f}x")


# ------------------------------------------------------------------ data and models
def _images(seed: int, n: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = SIZES[i % len(SIZES)]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(2 * np.pi * rng.uniform(1, 6) * (xx * rng.uniform(-1, 1) + yy))
                     for _ in range(3)], -1)
    img = 0.5 + 0.35 * base + 0.1 * rng.normal(size=(h, w, 3))
    out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
  return out


def _captions(seed: int, n: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, size=rng.integers(9, 16))) for _ in range(n)]


def _top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
  """Rows of the k most similar keys per query, most similar first (blocks bound memory)."""
  out = np.zeros((len(queries), k), np.int64)
  for s in range(0, len(queries), 2048):
    sim = queries[s:s + 2048] @ keys.T
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    out[s:s + 2048] = np.take_along_axis(
        top, np.argsort(-np.take_along_axis(sim, top, 1), axis=1), 1)
  return out


def workload_lists(seed: int, n_images: int, k: int, per_image: int = 5,
                   coarse: str = "embedding", noise: float = 0.25) -> dict:
  """Candidate lists: t2i [captions, k] image ids, i2t [images, k] caption ids (caption c
  belongs to image c // per_image); each image sits in about per_image * k t2i lists.

  coarse="embedding": a coarse stage over synthetic embeddings (images random unit vectors in
  32-D, captions their image's vector plus noise, top-k cosine), so look-alike images share
  lists as CLIP's do; "random": each t2i list is the own image and k - 1 images drawn
  uniformly (no locality at all: the worst case for a bounded cache).
  """
  rng = np.random.default_rng(seed + 2)
  n_captions = n_images * per_image
  owner = np.arange(n_captions) // per_image
  if coarse == "embedding":
    img = rng.normal(size=(n_images, 32))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    cap = img[owner] + noise * rng.normal(size=(n_captions, 32))
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    return dict(t2i=_top_k(cap, img, k), i2t=_top_k(img, cap, k))
  t2i = np.zeros((n_captions, k), np.int64)
  for c in range(n_captions):
    others = rng.choice(np.delete(np.arange(n_images), owner[c]), k - 1, replace=False)
    t2i[c] = rng.permutation(np.concatenate([[owner[c]], others]))
  i2t = np.zeros((n_images, k), np.int64)
  for i in range(n_images):
    own = rng.choice(np.arange(i * per_image, (i + 1) * per_image), 2, replace=False)
    others = rng.choice(np.delete(np.arange(n_captions), np.arange(i * per_image,
                                                                     (i + 1) * per_image)),
                        k - 2, replace=False)
    i2t[i] = rng.permutation(np.concatenate([own, others]))
  return dict(t2i=t2i, i2t=i2t)


def workload(seed: int, n_images: int, k: int, per_image: int = 5) -> dict:
  """Images, captions and the candidate lists of workload_lists."""
  return dict(images=_images(seed, n_images), captions=_captions(seed + 1, n_images * per_image),
              **workload_lists(seed, n_images, k, per_image))


def build_model(folder: str, s: dict):
  """Random HF Qwen2.5-VL (torch init) + tiny tokenizer + image processor config."""
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  from retformer_jax.demo import qwen as demo_qwen
  from retformer_jax.demo import tokenizers

  tokenizers.write_qwen_tokenizer(folder, _captions(0, 300) + [" ".join(WORDS)])
  demo_qwen.write_image_processor(folder, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
  ids = tokenizers.qwen_special_token_ids(folder)
  head_dim = s["hidden"] // s["heads"]
  q = head_dim // 16  # 7B: [16, 24, 24] of head_dim 128
  cfg = Qwen2_5_VLConfig(
      text_config=dict(
          vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["mlp"],
          num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
          num_key_value_heads=s["kv_heads"], rms_norm_eps=1e-6, max_position_embeddings=32768,
          tie_word_embeddings=False, use_sliding_window=False,
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                           "mrope_section": [2 * q, 3 * q, 3 * q]},
          bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
          pad_token_id=ids["<|endoftext|>"]),
      vision_config=dict(
          depth=s["v_layers"], hidden_size=s["v_hidden"], intermediate_size=s["v_mlp"],
          num_heads=s["v_heads"], out_hidden_size=s["hidden"], patch_size=14,
          spatial_merge_size=2, temporal_patch_size=2, window_size=112,
          fullatt_block_indexes=[7, 15, 23, 31][:s["v_full"]], hidden_act="silu",
          in_channels=3),
      image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
      vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
      tie_word_embeddings=False)
  torch.manual_seed(0)
  return Qwen2_5_VLForConditionalGeneration(cfg).eval()


class HF:
  """The HF model scoring pairs: one at a time (the reference) or in padded batches."""

  def __init__(self, model, folder: str):
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    from retformer_jax.data.qwen_preprocess import MATCH_PROMPT

    self.model = model
    self.tok = AutoTokenizer.from_pretrained(folder)
    self.tok.padding_side = "left"
    self.proc = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    self.prompt = MATCH_PROMPT
    self.true_id = self.tok.convert_tokens_to_ids("True")
    self.image_id = self.tok.convert_tokens_to_ids("<|image_pad|>")

  def inputs(self, images, captions):
    import torch

    vis = self.proc(images=list(images), return_tensors="pt")
    texts = []
    for grid, caption in zip(vis["image_grid_thw"], captions):
      msgs = [{"role": "user", "content": [
          {"type": "image"}, {"type": "text", "text": self.prompt.format(caption=caption)}]}]
      text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
      texts.append(text.replace("<|image_pad|>", "<|image_pad|>" * (int(grid.prod()) // 4)))
    enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    # As Qwen2_5_VLProcessor returns it: 1 marks image tokens (the 3-D rotary positions).
    mm_types = (enc["input_ids"] == self.image_id).to(torch.int32)
    return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                mm_token_type_ids=mm_types, pixel_values=vis["pixel_values"].to(torch.float32),
                image_grid_thw=vis["image_grid_thw"])

  def score(self, images, captions, **kw):
    """P(True) and entropy of the last position; kw e.g. logits_to_keep=1 (batched)."""
    import torch

    with torch.inference_mode():
      out = self.model(**self.inputs(images, captions), **kw)
      p = torch.softmax(out.logits[:, -1].double(), -1)
      ent = -(p * torch.log(p + 1e-10)).sum(-1)
    return p[:, self.true_id].numpy(), ent.numpy(), out


def calibrate_true_row(hf: HF, image, caption) -> None:
  """Aligns lm_head["True"] with the final hidden state so that P("True") is near 0.5."""
  import torch

  _, _, out = hf.score([image], [caption], output_hidden_states=True)
  h = out.hidden_states[-1][0, -1].double()  # after the final norm
  w = hf.model.lm_head.weight
  with torch.no_grad():
    others = torch.cat([w[:hf.true_id], w[hf.true_id + 1:]]).double() @ h
    target = torch.logsumexp(others, 0)
    w[hf.true_id] = (target / h.norm() * h / h.norm()).to(w.dtype)


# ------------------------------------------------------------------ the runs
def work_chunks(cands: np.ndarray, direction: str, chunk: int, frac: float = 1.0):
  """The pipeline's units of work, chunk by chunk: t2i pair ids q * K + slot in
  `pipeline.pair_order` (by candidate image), chunk * K pairs a chunk; i2t image queries in
  order, chunk a chunk. frac: the first share of them only."""
  from retformer_jax.retllm import pipeline

  k = cands.shape[1]
  if direction == "t2i":
    order, size = pipeline.pair_order(cands, np.arange(len(cands))), chunk * k
  else:
    order, size = np.arange(len(cands)), chunk
  order = order[:max(1, int(round(len(order) * frac)))]
  for s in range(0, len(order), size):
    yield order[s:s + size]


def run_ours(scorer, w: dict, chunk: int, frac: float = 1.0):
  """Scores {(image, caption): (p, entropy)} of both directions, chunk by chunk; seconds."""
  out = {}
  t0 = time.perf_counter()
  for direction in ("t2i", "i2t"):
    cands = w[direction]
    k = cands.shape[1]
    for ids in work_chunks(cands, direction, chunk, frac):
      if direction == "t2i":  # one call per chunk of pairs, grouped by image
        img_of, cap_of = cands[ids // k, ids % k], ids // k
        images, ii = np.unique(img_of, return_inverse=True)
        caps, ci = np.unique(cap_of, return_inverse=True)
        res = scorer.score_pairs([w["images"][i] for i in images],
                                 [w["captions"][q] for q in caps],
                                 list(zip(ii.reshape(-1).tolist(), ci.reshape(-1).tolist())))
        keys = [(int(i), int(q)) for i, q in zip(img_of, cap_of)]
      else:
        uniq, inv = np.unique(cands[ids], return_inverse=True)
        inv = inv.reshape(len(ids), -1)
        res = scorer.score_pairs([w["images"][q] for q in ids],
                                 [w["captions"][j] for j in uniq],
                                 [(r, int(inv[r, c])) for r in range(len(ids)) for c in range(k)])
        keys = [(int(q), int(uniq[inv[r, c]])) for r, q in enumerate(ids) for c in range(k)]
      for key, p, e, a in zip(keys, res.p_true, res.entropy, res.armed_layer):
        out.setdefault(key, []).append((p, e, a))
  return out, time.perf_counter() - t0


def all_pairs(w: dict) -> list[tuple[int, int]]:
  t2i = [(int(i), c) for c in range(len(w["t2i"])) for i in w["t2i"][c]]
  i2t = [(i, int(c)) for i in range(len(w["i2t"])) for c in w["i2t"][i]]
  return t2i + i2t


def run_reference(hf: HF, w: dict, pairs):
  t0 = time.perf_counter()
  out = {}
  for i, c in pairs:  # one pair per forward, logits of every position (HF's default)
    p, e, _ = hf.score([w["images"][i]], [w["captions"][c]])
    out[(i, c)] = (float(p[0]), float(e[0]))
  return out, time.perf_counter() - t0


def run_hf_batched(hf: HF, w: dict, batches):
  t0 = time.perf_counter()
  out = {}
  for batch in batches:
    p, e, _ = hf.score([w["images"][i] for i, _ in batch], [w["captions"][c] for _, c in batch],
                       logits_to_keep=1)
    out.update({pair: (float(a), float(b)) for pair, a, b in zip(batch, p, e)})
  return out, time.perf_counter() - t0


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--scale", type=int, default=8, help="7B widths divided by this")
  ap.add_argument("--images", type=int, default=12, help="gallery images (5 captions each)")
  ap.add_argument("--k", type=int, default=5)
  ap.add_argument("--chunk", type=int, default=32, help="queries per score_pairs call")
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--ref_pairs", type=int, default=8, help="reference pairs timed (sampled)")
  ap.add_argument("--hf_batches", type=int, default=2, help="HF batches of 8 timed (sampled)")
  ap.add_argument("--fired_fraction", type=float, default=0.5,
                  help="share of each direction's queries scored in the firing regime")
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
  ap.add_argument("--replay_only", action="store_true",
                  help="only the full-size prefix replay (no model runs): its table and JSON")
  args = ap.parse_args()
  if args.replay_only:
    full = full_size_replay(args.k)
    print_replay(full)
    print(json.dumps({"full_size_7b": full}))
    return
  if args.images < args.k:
    ap.error(f"--images {args.images} must be >= --k {args.k} (distinct candidates per list).")

  import torch

  if args.threads:
    torch.set_num_threads(args.threads)
  from retformer_jax.models.qwen_injection import InjectionConfig
  from retformer_jax.retllm.scorer import PairScorer

  s7, s = Q7B, scaled_shape(args.scale)
  w = workload(10, args.images, args.k)
  pairs = all_pairs(w)
  rng = np.random.default_rng(0)
  sample = [pairs[i] for i in rng.choice(len(pairs), args.ref_pairs + 8 * args.hf_batches,
                                         replace=False)]
  ref_pairs = sample[:args.ref_pairs]
  hf_batches = [sample[args.ref_pairs + 8 * b:args.ref_pairs + 8 * (b + 1)]
                for b in range(args.hf_batches)]
  # The default budget (4 GiB) holds this many 7B bf16 prefixes of Flickr size (~320 tokens
  # padded); the scaled float32 model gets a budget holding as many of its own.
  entries_7b = DEFAULT_PREFIX_BYTES // prefix_entry_bytes(Q7B, 320, 2)
  budget = entries_7b * prefix_entry_bytes(s, 320, 4)

  with tempfile.TemporaryDirectory() as folder:
    hf = HF(build_model(folder, s), folder)
    calibrate_true_row(hf, w["images"][0], w["captions"][0])  # also warms the HF model up
    hf.model.save_pretrained(folder)

    def scorer(tau):
      inj = InjectionConfig(enabled=True, tau=tau)  # layers 5 < l < 16 watched, as released
      return PairScorer.from_folder(folder, dtype="float32", min_pixels=MIN_PIXELS,
                                    max_pixels=MAX_PIXELS, floor_decimals=None, injection=inj,
                                    batch_size=args.batch_size, pre_resize=False,
                                    prefix_cache_bytes=budget)

    # Compilation: a smaller workload on other pixels (remaining shapes compile in the run).
    warm = workload(1000, max(args.k, args.images // 3), args.k)
    t0 = time.perf_counter()
    run_ours(scorer(1.5), warm, args.chunk)
    run_ours(scorer(0.0), warm, args.chunk, frac=0.34)
    warm_s = time.perf_counter() - t0

    _log(f"compile warm-up {warm_s:.0f} s")
    half = len(ref_pairs) // 2
    ref_a, ref_a_s = run_reference(hf, w, ref_pairs[:half])
    _log(f"reference, first half: {len(ref_a)} pairs in {ref_a_s:.0f} s")
    hfb_a, hfb_a_s = run_hf_batched(hf, w, hf_batches[:1])
    _log(f"HF batched, first half: {len(hfb_a)} pairs in {hfb_a_s:.0f} s")
    never = scorer(1.5)
    ours, ours_s = run_ours(never, w, args.chunk)
    _log(f"ours, never firing: {ours_s:.0f} s")
    fired = scorer(0.0)
    ours_f, ours_f_s = run_ours(fired, w, args.chunk, frac=args.fired_fraction)
    _log(f"ours, firing: {ours_f_s:.0f} s")
    ref_b, ref_b_s = run_reference(hf, w, ref_pairs[half:])
    _log(f"reference, second half: {len(ref_b)} pairs in {ref_b_s:.0f} s")
    hfb_b, hfb_b_s = run_hf_batched(hf, w, hf_batches[1:])
    _log(f"HF batched, second half: {len(hfb_b)} pairs in {hfb_b_s:.0f} s")

  ref, hfb = {**ref_a, **ref_b}, {**hfb_a, **hfb_b}
  n_ours = sum(len(v) for v in ours.values())
  n_fired = sum(len(v) for v in ours_f.values())
  ours_ps, fired_ps = n_ours / ours_s, n_fired / ours_f_s
  ref_ps = len(ref) / (ref_a_s + ref_b_s)
  hfb_ps = len(hfb) / (hfb_a_s + hfb_b_s)
  diffs = [abs(v[0] - ours[k][0][0]) for k, v in list(ref.items()) + list(hfb.items())]
  ent_diffs = [abs(v[1] - ours[k][0][1]) for k, v in list(ref.items()) + list(hfb.items())]
  armed_never = {int(x[2]) for v in ours.values() for x in v}
  armed_fired = {int(x[2]) for v in ours_f.values() for x in v}

  # FLOP shares per reference pair at this run's mean sizes, and the 7B projection.
  st, stf = never.stats, fired.stats  # Counters: a count never made is 0
  tokens = (st["prefill_tokens"] / st["prefix_misses"] + st["suffix_tokens"] / st["extend_rows"])
  patches = st["vision_patches"] / st["vision_calls"]
  c7, cs = costs(s7), costs(s)
  sh7, shs = shares(reference_pair(c7, patches, tokens)), shares(reference_pair(cs, patches,
                                                                                tokens))
  ref7 = sum(reference_pair(c7, patches, tokens).values())
  proj = ref7 * st["pairs"] / ours_flops(c7, st, s7["layers"], True)
  proj_f = ref7 * stf["pairs"] / ours_flops(c7, stf, s7["layers"], True)
  full = full_size_replay(args.k)
  result = {
      "ours_pairs_s": ours_ps, "reference_pairs_s": ref_ps, "hf_batched_pairs_s": hfb_ps,
      "speedup_vs_reference": ours_ps / ref_ps, "speedup_vs_hf_batched": ours_ps / hfb_ps,
      "speedup_vs_reference_injection_fired": fired_ps / ref_ps,
      "max_abs_score_diff": float(max(diffs)),
      "vision_calls_per_image": st["vision_calls"] / args.images,
      "projected_7b_speedup": proj}
  extra = {
      "ours_fired_pairs_s": fired_ps, "projected_7b_speedup_fired": proj_f,
      "max_abs_entropy_diff": float(max(ent_diffs)), "pairs": n_ours, "fired_pairs": n_fired,
      "prefix_hits": st["prefix_hits"], "prefix_misses": st["prefix_misses"],
      "prefix_cache_bytes": budget, "mean_prompt_tokens": tokens, "mean_patches": patches,
      "compile_warmup_s": warm_s, "armed_layers_never": sorted(armed_never),
      "armed_layers_fired": sorted(armed_fired), "full_size_7b": full}

  print(f"shape: scale 1/{args.scale}: text {s['hidden']} x {s['layers']} layers, MLP {s['mlp']},"
        f" heads {s['heads']}/{s['kv_heads']}, vocab {s['vocab']}; vision {s['v_hidden']} x "
        f"{s['v_layers']}, MLP {s['v_mlp']}")
  print(f"FLOP shares per reference pair ({patches:.0f} patches, {tokens:.0f} tokens):")
  print(f"  {'':10s}{'7B':>8s}{'scaled':>8s}")
  for part in sh7:
    print(f"  {part:10s}{sh7[part]:8.1%}{shs[part]:8.1%}")
  print(f"workload: {args.images} images x 5 captions, K={args.k}, {n_ours} pairs "
        f"(t2i {len(w['t2i']) * args.k}, i2t {len(w['i2t']) * args.k}); prefix cache "
        f"{budget / 2**20:.0f} MiB: {st['prefix_hits']} hits / {st['prefix_misses']} misses; "
        f"vision calls per image {result['vision_calls_per_image']:.2f}")
  print(f"{'run':44s}{'pairs':>7s}{'seconds':>9s}{'pairs/s':>9s}{'speedup':>9s}")
  rows = [("reference: 1 pair/forward, all logits", len(ref), ref_a_s + ref_b_s, ref_ps),
          ("HF batched: 8 pairs/forward, last logits", len(hfb), hfb_a_s + hfb_b_s, hfb_ps),
          ("ours, injection never firing", n_ours, ours_s, ours_ps),
          ("ours, injection firing on every pair", n_fired, ours_f_s, fired_ps)]
  for name, n, sec, ps in rows:
    print(f"{name:44s}{n:7d}{sec:9.1f}{ps:9.3f}{ps / ref_ps:8.1f}x")
  print(f"vs HF batched: {ours_ps / hfb_ps:.1f}x; projected at 7B FLOPs: {proj:.1f}x (never "
        f"firing), {proj_f:.1f}x (firing); max |dP(True)| {max(diffs):.1e} over "
        f"{len(diffs)} pairs; compile warm-up {warm_s:.0f} s")
  print_replay(full)
  print(json.dumps(extra))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
