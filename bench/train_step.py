"""RetFormer train-step throughput at paper size on this machine, as a fraction of its matmul peak.

  python bench/train_step.py            # d=512, k=32, L=4, batch 256, 1000 classes, 8 heads

Runs the real jitted `train_step` (AdamW, LACE, label smoothing, mixup) on random inputs.
FLOPs per step are counted analytically from the matmuls (forward x 3 for forward + backward;
elementwise work, softmax and the optimizer are not counted) and compared with XLA's own cost
analysis of the compiled step. The peak is measured in the same run: the best of a JAX and a
NumPy 4096x4096 float32 matmul. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def matmul_flops_forward(b: int, k: int, d: int, layers: int, mlp_ratio: int, classes: int,
                         backbone_hidden: int = 0) -> int:
  """Multiply-adds x 2 of one forward pass of RetFormer (image_text, width = d)."""
  s, f = k + 1, mlp_ratio * d
  per_layer = (
      2 * 4 * 2 * b * s * d * d  # 2 attention blocks x (q, k, v, out) projections
      + 2 * 2 * 2 * b * s * s * d  # 2 blocks x (q k^T and attention x v) over all heads
      + 2 * 2 * 2 * b * s * d * f)  # 2 streams x MLP (d -> f -> d)
  if backbone_hidden:
    backbone = 2 * b * d * backbone_hidden + 2 * b * backbone_hidden * classes
  else:
    backbone = 2 * b * d * classes
  head = 2 * b * (2 * d) * classes
  return layers * per_layer + backbone + head


def _time(fn, reps: int) -> float:
  fn()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def matmul_peak(n: int = 4096, reps: int = 3) -> dict:
  import jax
  import jax.numpy as jnp

  flops = 2.0 * n ** 3
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
  numpy_s = _time(lambda: a @ b, reps)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  mm = jax.jit(jnp.matmul)
  jax_s = _time(lambda: mm(ja, jb).block_until_ready(), reps)
  return {"numpy": flops / numpy_s, "jax": flops / jax_s}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--k", type=int, default=32)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32")
  args = p.parse_args()

  import jax

  from configs import common
  from retformer_jax.parallel import mesh as mesh_lib
  from retformer_jax.train import setup as setup_lib

  c = common.get_config()
  c.model.num_layers, c.model.num_heads, c.model.dtype = args.layers, args.heads, args.dtype
  c.train.batch_size, c.train.loss = args.batch, "lace"
  counts = np.maximum(1000 * 0.99 ** np.arange(args.classes), 1).astype(np.int64)
  setup = setup_lib.make(c, num_classes=args.classes, k=args.k, dim=args.dim,
                         steps_per_epoch=100, train_counts=counts)
  state = setup.init_state(seed=0)
  step = setup.step
  rng = np.random.default_rng(0)
  unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(
      rng.standard_normal(s, dtype=np.float32))
  bsh = setup.batch_sharding
  batch = {"z": unit(args.batch, args.dim), "nb_image": unit(args.batch, args.k, args.dim),
           "nb_text": unit(args.batch, args.k, args.dim),
           "label": rng.integers(0, args.classes, args.batch).astype(np.int32)}
  batch = {k: jax.device_put(v, bsh) for k, v in batch.items()}
  key = jax.random.key(0)

  t = time.perf_counter()
  with mesh_lib.activate(setup.mesh, setup.rules):
    compiled = step.jitted.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  state, m = step(state, batch, key)  # warm-up (also the first execution)
  jax.block_until_ready(m)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  flops = 3 * matmul_flops_forward(args.batch, args.k, args.dim, args.layers, 4, args.classes)
  peaks = matmul_peak()
  peak = max(peaks.values())
  achieved = flops / step_s
  rows = [
      ("model", f"d={args.dim} k={args.k} L={args.layers} heads={args.heads} "
                f"classes={args.classes} batch={args.batch} {args.dtype}"),
      ("devices", f"{jax.device_count()} x {jax.devices()[0].platform}"),
      ("compile", f"{compile_s:.1f} s"),
      ("step time (median of %d)" % args.steps, f"{step_s * 1e3:.0f} ms"),
      ("steps/s", f"{1 / step_s:.3f}"),
      ("FLOPs/step (analytic, matmuls x3)", f"{flops / 1e9:.1f} G"),
      ("FLOPs/step (XLA cost analysis)", f"{xla_flops / 1e9:.1f} G"),
      ("achieved", f"{achieved / 1e9:.1f} GFLOP/s"),
      ("matmul peak JAX / NumPy 4096^2", f"{peaks['jax'] / 1e9:.1f} / {peaks['numpy'] / 1e9:.1f} GFLOP/s"),
      ("fraction of peak", f"{achieved / peak:.3f}"),
      ("final loss", f"{float(m['loss']):.4f}"),
  ]
  width = max(len(r[0]) for r in rows)
  for name, value in rows:
    print(f"{name:<{width}}  {value}")
  print(json.dumps({"steps_s": 1 / step_s, "flops_per_step": flops, "achieved_flops": achieved,
                    "matmul_peak_flops": peak, "fraction_of_peak": achieved / peak,
                    "compile_s": compile_s, "xla_flops_per_step": xla_flops}))


if __name__ == "__main__":
  main()
