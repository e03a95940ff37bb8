"""A RetFormer training / evaluation job on generated data, run as a subprocess by the tests
that need fresh JAX processes (fake device counts, SIGTERM, two real processes with gloo).

  python tests/retformer_worker.py train WORKDIR --devices 8 --mesh-model 2
  python tests/retformer_worker.py eval WORKDIR --devices 4 --mesh-model 2 --tag d4
  python tests/retformer_worker.py train WORKDIR --devices 2 --num-processes 2 --process-id 0 --port P

`train` trains (or resumes) and writes WORKDIR/out_train.npz (parameters, validation logits);
`eval` restores the parameters onto this job's mesh and writes WORKDIR/out_eval_<tag>.npz.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time


def _args():
  p = argparse.ArgumentParser()
  p.add_argument("mode", choices=("train", "eval"))
  p.add_argument("workdir")
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--mesh-model", type=int, default=1)
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--sleep", type=float, default=0.0, help="seconds per batch read (slow disk)")
  p.add_argument("--tag", default="")
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  return p.parse_args()


def config(args):
  from configs import common

  c = common.get_config()
  c.mesh.model = args.mesh_model
  c.model.num_layers, c.model.num_heads, c.model.width = 2, 2, 8
  c.train.batch_size, c.train.epochs, c.train.log_every = 16, args.epochs, 1
  c.train.lr, c.train.warmup_epochs, c.train.mixup_alpha = 3e-3, 1.0, 0.2
  c.train.label_smoothing, c.train.loss = 0.1, "lace"
  c.checkpoint.every_steps, c.checkpoint.async_save = 1000, True
  c.eval.batch_size = 8
  return c


def main():
  args = _args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax

  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id)
  import numpy as np
  from retformer_jax.parallel import mesh as mesh_lib

  from retformer_jax.evaluation import evaluator
  from retformer_jax.train import input_pipeline, loop, synthetic

  c = config(args)
  data = synthetic.make()
  if args.sleep:
    class Slow(input_pipeline.QuerySet):
      def read(self, idx):
        time.sleep(args.sleep)
        return super().read(idx)
    data = dataclasses.replace(data, train=Slow(**{f.name: getattr(data.train, f.name)
                                                   for f in dataclasses.fields(data.train)}))
  ckpt_dir = os.path.join(args.workdir, "checkpoints")
  from retformer_jax import errors

  preempted = None
  if args.mode == "train":
    try:
      loop.train(c, args.workdir, data.training())
    except errors.Preempted as e:
      preempted = e
      print(f"train: {e}", file=sys.stderr, flush=True)
  # The interrupted state is evaluated too (the SIGTERM test compares it); main never does.
  r = evaluator.restore(c, ckpt_dir, data.num_classes, data.train.k, data.train.image.shape[1])
  repl = mesh_lib.replicated(r.mesh)
  bsh = mesh_lib.batch_sharding(r.mesh)
  logits_fn = jax.jit(lambda p, b: r.model.apply({"params": p}, b["z"], b["nb_image"],
                                                 b["nb_text"]), out_shardings=repl)
  logits = []
  for batch, _, mask in input_pipeline.eval_batches(data.val, c.eval.batch_size, bsh):
    logits.append(np.asarray(logits_fn(r.params, batch))[mask])
  params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)) if x.is_fully_addressable
                        else np.asarray(x.addressable_data(0)), r.params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  report = evaluator.evaluate(c, r, "val", data.val, data.train_counts,
                              [f"c{i}" for i in range(data.num_classes)],
                              os.path.join(args.workdir, "eval", args.tag or args.mode))
  if jax.process_index() == 0:
    name = "out_train.npz" if args.mode == "train" else f"out_eval_{args.tag}.npz"
    np.savez(os.path.join(args.workdir, name), logits=np.concatenate(logits),
             top1=report["top1"], step=r.step, **{"param/" + k: v for k, v in flat.items()})
  if args.num_processes > 1:
    jax.distributed.shutdown()
  if preempted is not None:
    sys.exit(errors.EXIT_PREEMPTED)


if __name__ == "__main__":
  main()
