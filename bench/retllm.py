"""Pairs scored per second: our Flax scorer vs HF PyTorch Qwen2.5-VL, one pair per forward.

  python bench/retllm.py [--layers 2 --vision_layers 4 --hidden 1536 --queries 4 --k 5]

Both sides use the same random weights (a HF Qwen2.5-VL with real widths but few layers, so
compute dominates; written with save_pretrained and loaded by ours through
hf.load_qwen2_5_vl) and the same pairs: Q caption queries x K candidate images (text->image)
and Q image queries x K candidate captions (image->text), images of 256-272 visual tokens
(the 256*28^2 ... 512*28^2 pixel range). The reference way is the public RetLLM code's: full
chat prompt, batch 1, no cache, logits of every position. Ours gets each direction's pairs in
one `score_pairs` call, as the pipeline passes a chunk of queries: it batches candidates,
computes each image's vision features and prompt prefix (system, image, question head) once,
and the last position's logits only.
Re-injection is off on both sides (transformers has none) and scores are not floored, so the
raw P("True") values are compared.

Random weights give P("True") ~ 1/vocab for every pair, which would make any score difference
look tiny; so the lm_head row of "True" is aligned with the final hidden state (calibrated on
one pair) to put P("True") near 0.5, where differences show.

Prints a table, then as its last line one JSON object:
  {"ours_pairs_s", "hf_pairs_s", "speedup", "max_abs_score_diff", ...}
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
# (height, width): 256, 266, 270, 260 and 272 merged visual tokens after smart_resize.
SIZES = ((448, 448), (392, 532), (420, 504), (520, 400), (448, 476))


def _images(seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  out = []
  for h, w in SIZES:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(2 * np.pi * rng.uniform(1, 6) * (xx * rng.uniform(-1, 1) + yy))
                     for _ in range(3)], -1)
    img = 0.5 + 0.35 * base + 0.1 * rng.normal(size=(h, w, 3))
    out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
  return out


def _captions(seed: int, n: int) -> list[str]:
  rng = np.random.default_rng(seed)
  words = ("a", "dog", "red", "ball", "two", "people", "walking", "on", "the", "beach", "with",
           "sunset", "child", "bike", "street", "city", "near", "green", "tree", "playing")
  return [" ".join(rng.choice(words, size=rng.integers(6, 14))) for _ in range(n)]


def build_folder(folder: str, args) -> dict:
  """Random HF Qwen2.5-VL (torch init) + tiny tokenizer + image processor config."""
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  from retformer_jax.demo import qwen as demo_qwen
  from retformer_jax.demo import tokenizers

  tokenizers.write_qwen_tokenizer(folder, _captions(0, 200))
  demo_qwen.write_image_processor(folder, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
  ids = tokenizers.qwen_special_token_ids(folder)
  heads = args.hidden // 128
  cfg = Qwen2_5_VLConfig(
      text_config=dict(
          vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp,
          num_hidden_layers=args.layers, num_attention_heads=heads,
          num_key_value_heads=max(1, heads // 6), rms_norm_eps=1e-6,
          max_position_embeddings=32768, tie_word_embeddings=False, use_sliding_window=False,
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                           "mrope_section": [16, 24, 24]},
          bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
          pad_token_id=ids["<|endoftext|>"]),
      vision_config=dict(
          depth=args.vision_layers, hidden_size=args.vision_hidden,
          intermediate_size=args.vision_hidden * 27 // 10, num_heads=args.vision_hidden // 80,
          out_hidden_size=args.hidden, patch_size=14, spatial_merge_size=2,
          temporal_patch_size=2, window_size=112,
          fullatt_block_indexes=[args.vision_layers - 1], hidden_act="silu", in_channels=3),
      image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
      vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
      tie_word_embeddings=False)
  torch.manual_seed(0)
  model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
  return {"model": model, "config": cfg}


class HFReference:
  """The reference scorer: one full forward per pair, batch 1, no cache."""

  def __init__(self, model, folder: str):
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    from retformer_jax.data.qwen_preprocess import MATCH_PROMPT

    self.model = model
    self.tok = AutoTokenizer.from_pretrained(folder)
    self.proc = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    self.prompt = MATCH_PROMPT
    self.true_id = self.tok.convert_tokens_to_ids("True")

  def inputs(self, image, caption):
    import torch

    msgs = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": self.prompt.format(caption=caption)}]}]
    text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    vis = self.proc(images=[image], return_tensors="pt")
    n = int(vis["image_grid_thw"][0].prod()) // 4
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    enc = self.tok(text, return_tensors="pt", add_special_tokens=False)
    image_id = self.tok.convert_tokens_to_ids("<|image_pad|>")
    # As Qwen2_5_VLProcessor returns it: 1 marks image tokens (the 3-D rotary positions).
    mm_types = (enc["input_ids"] == image_id).to(torch.int32)
    return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                mm_token_type_ids=mm_types,
                pixel_values=vis["pixel_values"].to(torch.float32),
                image_grid_thw=vis["image_grid_thw"])

  def score(self, image, caption, **kw):
    import torch

    with torch.inference_mode():
      out = self.model(**self.inputs(image, caption), **kw)
      logits = out.logits[0, -1].double()
      p = torch.softmax(logits, -1)
      ent = -(p * torch.log(p + 1e-10)).sum()
    return float(p[self.true_id]), float(ent), out


def calibrate_true_row(ref: HFReference, image, caption) -> None:
  """Aligns lm_head["True"] with the final hidden state so that P("True") is near 0.5."""
  import torch

  _, _, out = ref.score(image, caption, output_hidden_states=True)
  h = out.hidden_states[-1][0, -1].double()  # after the final norm
  w = ref.model.lm_head.weight
  with torch.no_grad():
    others = torch.cat([w[:ref.true_id], w[ref.true_id + 1:]]).double() @ h
    target = torch.logsumexp(others, 0)
    u = h / h.norm()
    w[ref.true_id] = (target / h.norm() * u).to(w.dtype)


def workload(seed: int, queries: int, k: int):
  """Q caption queries x K images and Q image queries x K captions."""
  images = _images(seed)
  captions = _captions(seed + 1, queries * k)
  rng = np.random.default_rng(seed + 2)
  t2i = [(captions[q], [images[i] for i in rng.permutation(len(images))[:k]])
         for q in range(queries)]
  i2t = [(images[q % len(images)], captions[q * k:(q + 1) * k]) for q in range(queries)]
  return t2i, i2t


def run_ours(scorer, t2i, i2t):
  """Each direction's pairs in one `score_pairs` call, as the pipeline hands over a chunk."""
  images = {id(img): img for _, imgs in t2i for img in imgs}
  order = list(images)
  captions = [c for c, _ in t2i]
  pairs = [(order.index(id(img)), q) for q, (_, imgs) in enumerate(t2i) for img in imgs]
  a = scorer.score_pairs([images[i] for i in order], captions, pairs)
  caps = [c for _, cs in i2t for c in cs]
  pairs = [(q, q * len(cs) + j) for q, (_, cs) in enumerate(i2t) for j in range(len(cs))]
  b = scorer.score_pairs([img for img, _ in i2t], caps, pairs)
  return (np.concatenate([a.p_true, b.p_true]), np.concatenate([a.entropy, b.entropy]))


def run_hf(ref, t2i, i2t):
  p, e = [], []
  for caption, imgs in t2i:
    for img in imgs:
      a, b, _ = ref.score(img, caption)
      p.append(a)
      e.append(b)
  for img, caps in i2t:
    for cap in caps:
      a, b, _ = ref.score(img, cap)
      p.append(a)
      e.append(b)
  return np.asarray(p), np.asarray(e)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--hidden", type=int, default=1536)
  ap.add_argument("--mlp", type=int, default=8960)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--vision_layers", type=int, default=4)
  ap.add_argument("--vision_hidden", type=int, default=1280)
  ap.add_argument("--vocab", type=int, default=151936)
  ap.add_argument("--queries", type=int, default=4)
  ap.add_argument("--k", type=int, default=5)
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
  args = ap.parse_args()

  import torch

  if args.threads:
    torch.set_num_threads(args.threads)
  from retformer_jax.retllm.scorer import PairScorer

  with tempfile.TemporaryDirectory() as folder:
    built = build_folder(folder, args)
    ref = HFReference(built["model"], folder)
    t2i, i2t = workload(10, args.queries, args.k)
    calibrate_true_row(ref, t2i[0][1][0], t2i[0][0])  # also warms the HF model up
    ref.model.save_pretrained(folder)  # safetensors; ours reads it with hf.load_qwen2_5_vl
    n_pairs = 2 * args.queries * args.k

    scorer = PairScorer.from_folder(folder, dtype="float32", min_pixels=MIN_PIXELS,
                                    max_pixels=MAX_PIXELS, floor_decimals=None, injection=None,
                                    batch_size=args.batch_size, pre_resize=False)
    warm_t2i, warm_i2t = workload(1000, args.queries, args.k)  # other pixels: no cache hits
    t0 = time.perf_counter()
    run_ours(scorer, warm_t2i, warm_i2t)
    ours_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    p_ours, e_ours = run_ours(scorer, t2i, i2t)
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    p_hf, e_hf = run_hf(ref, t2i, i2t)
    hf_s = time.perf_counter() - t0

  score_diff = float(np.abs(p_ours - p_hf).max())
  ent_diff = float(np.abs(e_ours - e_hf).max())
  result = {
      "ours_pairs_s": n_pairs / ours_s, "hf_pairs_s": n_pairs / hf_s,
      "speedup": hf_s / ours_s, "max_abs_score_diff": score_diff,
      "max_abs_entropy_diff": ent_diff, "pairs": n_pairs,
      "p_true_range": [float(p_hf.min()), float(p_hf.max())],
      "ours_first_pass_s": ours_warm, "ours_s": ours_s, "hf_s": hf_s,
      "text_hidden": args.hidden, "text_layers": args.layers,
      "vision_layers": args.vision_layers, "vocab": args.vocab}
  print(f"{'':8s}{'pairs/s':>10s}{'seconds':>10s}")
  print(f"{'ours':8s}{result['ours_pairs_s']:10.2f}{ours_s:10.1f}   "
        f"(first pass incl. compile: {ours_warm:.1f} s)")
  print(f"{'hf':8s}{result['hf_pairs_s']:10.2f}{hf_s:10.1f}")
  print(f"speedup {result['speedup']:.2f}x, max |dP(True)| {score_diff:.2e}, "
        f"max |dH| {ent_diff:.2e}, P(True) in [{p_hf.min():.3f}, {p_hf.max():.3f}]")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
