"""RetFormer train-step throughput at paper size on this machine, as a fraction of its matmul peak.

  python bench/train_step.py               # d=512, k=32, L=4, batch 256, 1000 classes, 8 heads
  python bench/train_step.py --breakdown   # also: where one step's time goes, per op (profile)

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
import collections
import glob
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
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


def matmul_flops_forward(b: int, k: int, d: int, layers: int, mlp_ratio: int, classes: int,
                         backbone_hidden: int = 0) -> int:
  """Multiply-adds x 2 of one forward pass of RetFormer (image_text, width = d)."""
  return sum(matmul_flops_parts(b, k, d, layers, mlp_ratio, classes, backbone_hidden).values())


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
def _parse_hlo(text: str) -> tuple[dict, set]:
  """{instruction: (opcode, op_name, called computation)} of the entry computation, and the
  names of the computations that contain a dot or convolution."""
  entry, with_dot, comp, in_entry = {}, set(), None, False
  for line in text.splitlines():
    head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head:
      comp, in_entry = head.group(2), bool(head.group(1))
      continue
    inst = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$", line)
    if not inst:
      continue
    op = re.search(r" ([a-z][a-z0-9\-]*)\(", " " + inst.group(2))
    opcode = op.group(1) if op else "?"
    if opcode in ("dot", "convolution"):
      with_dot.add(comp)
    if in_entry:
      name = re.search(r'op_name="([^"]*)"', line)
      calls = re.search(r"calls=%?([\w.\-]+)", line)
      entry[inst.group(1)] = (opcode, name.group(1) if name else "",
                              calls.group(1) if calls else None)
  return entry, with_dot


def _part(op_name: str) -> str:
  """The model part an HLO op belongs to, from its JAX name stack."""
  if "jvp(" not in op_name:
    if re.search(r"_beta|_gamma|threefry|_shuffle|_uniform", op_name):
      return "rng (mixup lambda, permutation)"
    return "optimizer, clip, metrics, mixup"
  if "queries_" in op_name or "attention" in op_name:
    if re.search(r"/(query|key|value|out)/", op_name):
      return "attention projections"
    if "bqhk,bshk->bhqs" in op_name or "bhqs,bshk->bqhk" in op_name:
      return "attention scores (QK^T, AV)"
    return "attention softmax etc."
  if "/mlp_" in op_name:
    return "MLP (fc1, fc2)"
  if "/ln_" in op_name:
    return "layer norms"
  if "_head" in op_name:
    return "heads"
  return "loss, streams, other"


def breakdown(compiled, state, batch, key, hlo_text: str, flops_parts: dict) -> tuple:
  """Profiles one run of the compiled train step: forward / backward / matmul time per part.

  Times are the XLA CPU runtime's per-op (thunk) events of the entry computation; ops inside
  loops and calls are counted with their parent. Independent ops may overlap, so the op time can
  exceed the wall time of the step.
  """
  import jax
  from jax.profiler import ProfileData

  entry, with_dot = _parse_hlo(hlo_text)
  module = re.search(r"^HloModule ([\w.\-]+)", hlo_text, re.M).group(1)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    t = time.perf_counter()
    state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    data = ProfileData.from_file(glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0])
    table = collections.defaultdict(lambda: collections.Counter())
    for plane in data.planes:
      for line in plane.lines:
        for e in line.events:
          stats = dict(e.stats)
          if stats.get("hlo_module") != module or stats.get("hlo_op") not in entry:
            continue
          opcode, op_name, calls = entry[stats["hlo_op"]]
          row = table[_part(op_name)]
          sec = e.duration_ns * 1e-9
          row["total"] += sec
          row["backward" if "transpose(jvp(" in op_name else
              "forward" if "jvp(" in op_name else "outside"] += sec
          if opcode in ("dot", "convolution") or calls in with_dot:
            row["matmul"] += sec
  return state, dict(table), wall


def breakdown_rows(table: dict, wall: float, flops_parts: dict, peak: float) -> list[tuple]:
  total = sum(r["total"] for r in table.values())
  order = list(flops_parts) + ["attention softmax etc.", "layer norms", "loss, streams, other",
                               "optimizer, clip, metrics, mixup", "rng (mixup lambda, permutation)"]
  ms = lambda x: f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"
  rows = [("part", "fwd ms", "bwd ms", "other ms", "total ms", "share", "matmul ms",
           "matmul GFLOP/s", "of peak")]
  for part in order + sorted(set(table) - set(order)):
    r = table.get(part, collections.Counter())
    if part in flops_parts and r["matmul"] > 0:
      rate = 3 * flops_parts[part] / r["matmul"]
      rate_s, frac_s = f"{rate / 1e9:.1f}", f"{rate / peak:.2f}"
    else:
      rate_s = frac_s = "-"
    rows.append((part, ms(r["forward"]), ms(r["backward"]), ms(r["outside"]), ms(r["total"]),
                 f"{r['total'] / total:.1%}" if total else "-", ms(r["matmul"]), rate_s, frac_s))
  mm = sum(r["matmul"] for r in table.values())
  all_flops = 3 * sum(flops_parts.values())
  rows.append(("all ops", ms(sum(r["forward"] for r in table.values())),
               ms(sum(r["backward"] for r in table.values())),
               ms(sum(r["outside"] for r in table.values())), ms(total), "100%", ms(mm),
               f"{all_flops / mm / 1e9:.1f}" if mm else "-", f"{all_flops / mm / peak:.2f}"
               if mm else "-"))
  rows.append(("step wall time (profiled)", "", "", "", ms(wall), "", "", "", ""))
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
                 help="profile one more step and print where its time goes, per model part")
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
    state, table, wall = breakdown(compiled, state, batch, key, compiled.as_text(), parts)
    print(f"\nwhere one step's time goes (XLA CPU per-op profile; matmul GFLOP/s = analytic "
          f"FLOPs x3 / matmul op time, 'of peak' against {peak / 1e9:.1f} GFLOP/s):")
    print_rows(breakdown_rows(table, wall, parts, peak))
    result["breakdown_s"] = {k: dict(v) for k, v in table.items()}
    result["breakdown_wall_s"] = wall
  print(json.dumps(result))


if __name__ == "__main__":
  main()
