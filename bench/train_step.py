"""RetFormer train-step throughput at paper size on this machine, as a fraction of its matmul peak.

  python bench/train_step.py               # d=512, k=32, L=4, batch 256, 1000 classes, 8 heads
  python bench/train_step.py --breakdown   # also: where a step's time goes, piece by piece

Runs the real jitted `train_step` (AdamW, LACE, label smoothing, mixup) on random inputs.
FLOPs per step are counted analytically from the matmuls (forward x 3 for forward + backward;
elementwise work, softmax and the optimizer are not counted) and compared with XLA's own cost
analysis of the compiled step.

The peak is measured in the same run, as the best of three float32 matmuls: JAX at 4096^2, JAX
at the step's largest matmul shape (the MLP's [B (k+1), d] x [d, 4d]), and NumPy at 4096^2 in a
subprocess without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which can pin OpenBLAS to a slower
kernel than the CPU supports. The CPU's SIMD flags and the BLAS kernel NumPy used are printed.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# OpenBLAS settings that override its CPU detection; removed for the NumPy peak only.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# Run in a fresh interpreter: argv n, reps; prints one JSON line.
NUMPY_PEAK_SCRIPT = r"""
import json, sys, time
import numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range(reps):
  t = time.perf_counter()
  a @ b
  best = min(best, time.perf_counter() - t)
try:
  from threadpoolctl import threadpool_info
  blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
  error = None
except ImportError:
  blas, error = [], "threadpoolctl is not installed (pip install threadpoolctl)"
print(json.dumps({"flops": 2.0 * n ** 3 / best, "blas": blas, "error": error,
                  "numpy": np.__version__}))
"""


def matmul_flops_parts(b: int, k: int, d: int, layers: int, mlp_ratio: int, classes: int,
                       backbone_hidden: int = 0) -> dict[str, int]:
  """Forward matmul FLOPs (multiply-adds x 2) of RetFormer (image_text, width = d), by part."""
  s, f = k + 1, mlp_ratio * d
  if backbone_hidden:
    backbone = 2 * b * d * backbone_hidden + 2 * b * backbone_hidden * classes
  else:
    backbone = 2 * b * d * classes
  return {
      # 2 attention blocks x (q, k, v, out) projections
      "attention projections": layers * 2 * 4 * 2 * b * s * d * d,
      # 2 blocks x (q k^T and attention x v) over all heads
      "attention scores (QK^T, AV)": layers * 2 * 2 * 2 * b * s * s * d,
      "MLP (fc1, fc2)": layers * 2 * 2 * 2 * b * s * d * f,  # 2 streams x (d -> f -> d)
      "heads": backbone + 2 * b * (2 * d) * classes,
  }


def _time(fn, reps: int) -> float:
  fn()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def cpu_info() -> tuple[str, list[str]]:
  """The CPU model name and its matmul-relevant SIMD flags (avx*, amx*, fma)."""
  model, flags = platform.processor() or "unknown", []
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return model, flags
  m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
  model = m.group(1).strip() if m else model
  m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
  if m:
    flags = [x for x in m.group(1).split() if re.match(r"^(avx|amx)|^fma$", x)]
  return model, flags


def jax_matmul(m: int, k: int, n: int, dtype: str = "float32", reps: int = 3) -> float:
  """FLOP/s of JAX's jitted [m, k] x [k, n] matmul."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (m, k), dtype)
  b = jax.random.normal(jax.random.key(1), (k, n), dtype)
  mm = jax.jit(jnp.matmul)
  return 2.0 * m * k * n / _time(lambda: mm(a, b).block_until_ready(), reps)


def numpy_matmul(n: int = 4096, reps: int = 3) -> dict:
  """NumPy's n^2 float32 matmul in a subprocess without the OpenBLAS overrides, with its BLAS."""
  env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_OVERRIDES}
  out = subprocess.run([sys.executable, "-c", NUMPY_PEAK_SCRIPT, str(n), str(reps)], env=env,
                       capture_output=True, text=True, check=True)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  if r["blas"]:
    i = r["blas"][0]
    arch = i.get("architecture") or i.get("corename") or "?"
    r["kernel"] = f"{i.get('internal_api', '?')} {arch.lower()}"
    r["describe"] = (f"{i.get('internal_api', '?')} {i.get('version', '?')}, kernel {arch}, "
                     f"{i.get('num_threads', '?')} threads")
  else:
    r["kernel"] = "blas unknown"
    r["describe"] = r["error"] or "no BLAS library reported"
  return r


def matmul_peaks(step_shape: tuple[int, int, int], reps: int = 3) -> tuple[dict, dict]:
  """{source: FLOP/s} of the three float32 matmuls, and NumPy's report."""
  m, k, n = step_shape
  peaks = {"jax 4096^2": jax_matmul(4096, 4096, 4096, reps=reps),
           f"jax step shape {m}x{k}x{n}": jax_matmul(m, k, n, reps=reps)}
  np_result = numpy_matmul(4096, reps)
  peaks[f"numpy ({np_result['kernel']})"] = np_result["flops"]
  return peaks, np_result


# ----------------------------------------------------------------------------- breakdown
def _timed_block(module, inputs: tuple, reps: int, **kw) -> tuple[float, float]:
  """Seconds of one jitted forward, and of forward + backward (grads of the parameters and the
  inputs, as inside the network), of a standalone Flax module."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  params = nn.unbox(module.init(jax.random.key(0), *inputs, **kw))
  fwd = jax.jit(lambda p, *xs: module.apply(p, *xs, **kw))
  # A random cotangent: with sum() as the loss, XLA would turn the last layer's backward
  # matmuls into reductions. The value is returned too, or the last forward matmul is dropped.
  out = jax.eval_shape(fwd, params, *inputs)
  ct = jax.random.normal(jax.random.key(1), out.shape, out.dtype)
  total = lambda p, ct, *xs: jnp.vdot(module.apply(p, *xs, **kw), ct).astype(jnp.float32)
  grad = jax.jit(jax.value_and_grad(total, argnums=(0,) + tuple(range(2, len(inputs) + 2))))
  fwd_s = _time(lambda: jax.block_until_ready(fwd(params, *inputs)), reps)
  grad_s = _time(lambda: jax.block_until_ready(grad(params, ct, *inputs)), reps)
  return fwd_s, grad_s


def breakdown(setup, config, state, batch, counts, args, reps: int = 2) -> list[dict]:
  """Where a train step's time goes: each piece of the step jitted and timed on its own.

  The blocks (one attention direction, one stream's MLP, a layer norm, the heads) are timed
  standalone at the step's shapes and multiplied by their calls per step; the whole-model
  forward, forward + backward (loss included) and the optimizer update use the real model and
  state. Standalone blocks have both cores to themselves; in the step, XLA may run the two
  streams' blocks side by side, so the blocks' sum and the step need not agree.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from retformer_jax.models import layers, retformer
  from retformer_jax.parallel import mesh as mesh_lib
  from retformer_jax.train import losses

  class Heads(nn.Module):
    """backbone_head(z) + retrieval_head(ln_head([I_0; T_0])), as at the end of RetFormer."""

    classes: int
    dtype: object

    @nn.compact
    def __call__(self, z_bd, query_bd):
      dense = lambda n: layers.Dense(self.classes, ("embed", "classes"), self.dtype, name=n)
      out = dense("backbone_head")(z_bd).astype(jnp.float32)
      return out + dense("retrieval_head")(
          layers.LayerNorm("ln_head", self.dtype)(query_bd)).astype(jnp.float32)

  class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(hd)) v per head, as inside `Attention`, without the projections."""

    @nn.compact
    def __call__(self, q_bqhk, k_bshk, v_bshk):
      scale = jnp.sqrt(q_bqhk.shape[-1]).astype(q_bqhk.dtype)
      logits_bhqs = jnp.einsum("bqhk,bshk->bhqs", q_bqhk, k_bshk) / scale
      w_bhqs = jax.nn.softmax(logits_bhqs.astype(jnp.float32), axis=-1).astype(q_bqhk.dtype)
      return jnp.einsum("bhqs,bshk->bqhk", w_bhqs, v_bshk)

  b, s, d, L, c = args.batch, args.k + 1, args.dim, args.layers, args.classes
  f = config.model.mlp_ratio * d
  dt = retformer.DTYPES[args.dtype]
  keys = iter(jax.random.split(jax.random.key(0), 16))
  x = lambda *shape: jax.random.normal(next(keys), shape, dt)
  parts = matmul_flops_parts(b, args.k, d, L, config.model.mlp_ratio, c)
  out = []

  def add(name, calls, flops_fwd, fwd_s=None, grad_s=None, per_step_s=None, part_of=False):
    out.append({"piece": name, "calls": calls, "flops_fwd": flops_fwd, "fwd_s": fwd_s,
                "fwd_bwd_s": grad_s, "per_step_s": per_step_s, "part_of_previous": part_of})

  with mesh_lib.activate(setup.mesh, setup.rules):
    fs, gs = _timed_block(retformer.Attention(args.heads, dt), (x(b, s, d), x(b, s, d)), reps,
                          train=True)
    add("attention block (one direction)", 2 * L,
        (parts["attention projections"] + parts["attention scores (QK^T, AV)"]) // (2 * L),
        fs, gs, 2 * L * gs)
    h = args.heads
    fs, gs = _timed_block(AttentionCore(), tuple(x(b, s, h, d // h) for _ in range(3)), reps)
    add("  of which scores, softmax, AV", 2 * L, parts["attention scores (QK^T, AV)"] // (2 * L),
        fs, gs, 2 * L * gs, part_of=True)
    fs, gs = _timed_block(retformer.Mlp(f, dt), (x(b, s, d),), reps)
    add("MLP block (one stream)", 2 * L, parts["MLP (fc1, fc2)"] // (2 * L), fs, gs, 2 * L * gs)
    fs, gs = _timed_block(layers.LayerNorm("ln", dt), (x(b, s, d),), reps)
    add("layer norm", 4 * L, 0, fs, gs, 4 * L * gs)
    fs, gs = _timed_block(Heads(c, dt), (x(b, d), x(b, 2 * d)), reps)
    add("heads (backbone, ln_head, retrieval)", 1, parts["heads"], fs, gs, gs)
    add("sum of the blocks", None, None,
        per_step_s=sum(r["per_step_s"] for r in out if not r["part_of_previous"]))

    model, params = setup.model, state.params
    inputs = tuple(batch[k] for k in ("z", "nb_image", "nb_text"))
    targets = losses.smoothed_targets(batch["label"], c, config.train.label_smoothing)
    prior = jnp.asarray(losses.log_prior(counts))

    def loss_fn(p):
      logits = model.apply({"params": p}, *inputs, train=True)
      return jnp.mean(losses.classification_loss(logits, targets, loss="lace",
                                                 log_prior_c=prior, lace_tau=1.0))

    fwd = jax.jit(lambda p: model.apply({"params": p}, *inputs, train=True))
    grad = jax.jit(jax.value_and_grad(loss_fn))
    fwd_s = _time(lambda: jax.block_until_ready(fwd(params)), reps)
    grad_s = _time(lambda: jax.block_until_ready(grad(params)), reps)
    add("model forward", 1, sum(parts.values()), fwd_s, None, None)
    add("model forward + backward (loss)", 1, sum(parts.values()), None, grad_s, grad_s)
    grads = grad(params)[1]
    update = jax.jit(lambda g, o, p: (lambda u: (optax.apply_updates(p, u[0]), u[1]))(
        setup.tx.update(g, o, p)))
    opt_s = _time(lambda: jax.block_until_ready(update(grads, state.opt_state, params)), reps)
    add("optimizer update (clip, AdamW)", 1, 0, per_step_s=opt_s)
  return out


def breakdown_rows(pieces: list[dict], step_s: float, peak: float) -> list[tuple]:
  ms = lambda t: "-" if t is None else f"{t * 1e3:.0f}" if t >= 0.1 else f"{t * 1e3:.1f}"
  rate = lambda fl, t: "-" if not fl or t is None else f"{fl / t / 1e9:.1f}"
  frac = lambda fl, t: "-" if not fl or t is None else f"{fl / t / peak:.2f}"
  rows = [("piece", "calls", "fwd ms", "fwd GFLOP/s", "fwd+bwd ms", "fwd+bwd GFLOP/s",
           "of peak", "per step ms", "of step")]
  for r in pieces + [{"piece": "train step (measured above)", "calls": 1, "flops_fwd": None,
                      "fwd_s": None, "fwd_bwd_s": None, "per_step_s": step_s}]:
    fl, g = r["flops_fwd"], r["fwd_bwd_s"]
    rows.append((r["piece"], "" if r["calls"] is None else str(r["calls"]), ms(r["fwd_s"]),
                 rate(fl, r["fwd_s"]), ms(g), rate(fl and 3 * fl, g), frac(fl and 3 * fl, g),
                 ms(r["per_step_s"]),
                 "-" if r["per_step_s"] is None else f"{r['per_step_s'] / step_s:.0%}"))
  return rows


def print_rows(rows: list[tuple]) -> None:
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  for r in rows:
    print("  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                    for i, (c, w) in enumerate(zip(r, widths))).rstrip())


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
  p.add_argument("--peak-reps", type=int, default=3, help="timed repeats of each peak matmul")
  p.add_argument("--breakdown", action="store_true",
                 help="also time each piece of the step alone: where a step's time goes")
  args = p.parse_args()

  import jax

  from configs import common
  from retformer_jax.parallel import mesh as mesh_lib
  from retformer_jax.train import setup as setup_lib

  c = common.get_config()
  c.model.num_layers, c.model.num_heads, c.model.dtype = args.layers, args.heads, args.dtype
  c.train.batch_size, c.train.loss = args.batch, "lace"
  mlp_ratio = c.model.mlp_ratio
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
  parts = matmul_flops_parts(args.batch, args.k, args.dim, args.layers, mlp_ratio, args.classes)
  flops = 3 * sum(parts.values())
  achieved = flops / step_s

  step_shape = (args.batch * (args.k + 1), args.dim, mlp_ratio * args.dim)
  peaks, np_result = matmul_peaks(step_shape, args.peak_reps)
  peak_source = max(peaks, key=peaks.get)
  peak = peaks[peak_source]
  info_peak = None
  if args.dtype != "float32":
    info_peak = jax_matmul(*step_shape, dtype=args.dtype, reps=args.peak_reps)
  model_name, simd = cpu_info()

  rows = [
      ("model", f"d={args.dim} k={args.k} L={args.layers} heads={args.heads} "
                f"classes={args.classes} batch={args.batch} {args.dtype}"),
      ("cpu", f"{model_name}, {os.cpu_count()} logical cores"),
      ("cpu SIMD flags", " ".join(simd) or "none found"),
      ("devices", f"{jax.device_count()} x {jax.devices()[0].platform}, jax {jax.__version__}"),
      ("numpy BLAS (subprocess)", f"numpy {np_result['numpy']}, {np_result['describe']}"),
      ("compile", f"{compile_s:.1f} s"),
      ("step time (median of %d)" % args.steps, f"{step_s * 1e3:.0f} ms"),
      ("steps/s", f"{1 / step_s:.3f}"),
      ("FLOPs/step (analytic, matmuls x3)", f"{flops / 1e9:.1f} G"),
      ("FLOPs/step (XLA cost analysis)", f"{xla_flops / 1e9:.1f} G"),
      ("achieved", f"{achieved / 1e9:.1f} GFLOP/s"),
  ]
  rows += [(f"peak: {name} fp32", f"{v / 1e9:.1f} GFLOP/s") for name, v in peaks.items()]
  if info_peak is not None:
    rows.append((f"{args.dtype} step shape (not in the peak)", f"{info_peak / 1e9:.1f} GFLOP/s"))
  rows += [
      ("matmul peak (best)", f"{peak / 1e9:.1f} GFLOP/s, {peak_source}"),
      ("fraction of peak", f"{achieved / peak:.3f}"),
      ("final loss", f"{float(m['loss']):.4f}"),
  ]
  width = max(len(r[0]) for r in rows)
  for name, value in rows:
    print(f"{name:<{width}}  {value}")

  result = {"steps_s": 1 / step_s, "step_s": step_s, "flops_per_step": flops,
            "achieved_flops": achieved, "matmul_peak_flops": peak, "peak_source": peak_source,
            "fraction_of_peak": achieved / peak, "peaks_flops": peaks,
            "compile_s": compile_s, "xla_flops_per_step": xla_flops, "dtype": args.dtype,
            "cpu": model_name, "cpu_simd": simd, "numpy_blas": np_result["describe"]}
  if info_peak is not None:
    result[f"step_shape_matmul_flops_{args.dtype}"] = info_peak
  if args.breakdown:
    pieces = breakdown(setup, c, state, batch, counts, args)
    print(f"\nwhere a step's time goes: each piece jitted and timed alone (best of 2; "
          f"GFLOP/s = analytic matmul FLOPs / time, backward = 2 x forward; 'of peak' against "
          f"{peak / 1e9:.1f} GFLOP/s; per step = fwd+bwd x calls):")
    print_rows(breakdown_rows(pieces, step_s, peak))
    result["breakdown"] = pieces
  print(json.dumps(result))


if __name__ == "__main__":
  main()
