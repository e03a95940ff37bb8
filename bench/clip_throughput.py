"""Images/s of our jitted CLIP image tower vs transformers' PyTorch CLIP, same weights, this CPU.

  python bench/clip_throughput.py            # ViT-B/16 at 224 px, batch 32
  python bench/clip_throughput.py --iters 3 --batch 8   # quicker
  python bench/clip_throughput.py --threads 1           # per-core comparison

Both run float32 on all cores (torch threads = the core count XLA uses), both are warmed up,
and timed iterations alternate between the two so that any other load on the machine hits both
alike; the median iteration time is reported. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hf_vit_b16(image_size: int):
  """ViT-B/16 image tower (openai/clip-vit-base-patch16 shapes); a 1-layer text tower, which
  the image path never touches, keeps the checkpoint small."""
  import transformers

  return transformers.CLIPConfig(
      vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                         num_hidden_layers=12, patch_size=16, image_size=image_size),
      text_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                       num_hidden_layers=1, vocab_size=1000, bos_token_id=998,
                       eos_token_id=999, pad_token_id=0),
      projection_dim=512)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--image-size", type=int, default=224)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                  help="threads for both (default: all cores)")
  args = ap.parse_args()
  threads = args.threads
  if threads != (os.cpu_count() or 1):  # must be set before jax starts its CPU client
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen={str(threads > 1).lower()}"
                               f" intra_op_parallelism_threads={threads}")

  import jax
  import numpy as np
  import torch
  import transformers

  from retformer_jax.convert import hf

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  ref = transformers.CLIPModel(hf_vit_b16(args.image_size)).eval()
  with tempfile.TemporaryDirectory() as tmp:
    ref.save_pretrained(tmp)
    model, params = hf.load_clip(tmp)

  pixels = np.random.default_rng(0).standard_normal(
      (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  pixels_nchw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
  pixels_dev = jax.device_put(pixels)

  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
  t0 = time.perf_counter()
  encode.lower(params, pixels_dev).compile()
  compile_s = time.perf_counter() - t0

  def run_ours():
    return encode(params, pixels_dev).block_until_ready()

  def run_hf():
    with torch.inference_mode():
      return ref.get_image_features(pixel_values=pixels_nchw).pooler_output

  load = os.getloadavg()
  for _ in range(args.warmup):
    ours_out, hf_out = run_ours(), run_hf()
  times = {"ours": [], "hf": []}
  for _ in range(args.iters):
    for name, fn in (("ours", run_ours), ("hf", run_hf)):
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  diff = float(np.abs(np.asarray(ours_out) - hf_out.numpy()).max())
  scale = float(np.abs(hf_out.numpy()).max())

  rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
  print(f"CLIP ViT-B/16 image tower, {args.image_size} px, batch {args.batch}, float32, "
        f"{threads} threads, jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"torch {torch.__version__}")
  print(f"{'':10s} {'images/s':>10s} {'median s/iter':>14s} {'min s/iter':>11s}")
  for k, label in (("ours", "ours (jax)"), ("hf", "hf (torch)")):
    print(f"{label:10s} {rate[k]:10.2f} {statistics.median(times[k]):14.3f} "
          f"{min(times[k]):11.3f}")
  print(f"compile {compile_s:.1f} s; max abs diff {diff:.2e} (output max {scale:.2f}); "
        f"machine load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
  print(json.dumps({"ours_img_s": round(rate["ours"], 3), "hf_img_s": round(rate["hf"], 3),
                    "ratio": round(rate["ours"] / rate["hf"], 3),
                    "max_abs_diff": diff}))


if __name__ == "__main__":
  main()
