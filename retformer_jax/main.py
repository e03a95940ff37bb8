"""Entry point: `python -m retformer_jax.main --config=configs/demo.py --workdir=DIR`.

Parses flags, joins the multi-host job when there is one, then runs the stages the config names.
Every stage is cached in the workdir, so rerunning after a crash resumes where it stopped.

Exit statuses: 0 done; 2 a mistake to fix (one line on stderr; --verbose adds the traceback);
75 preempted (SIGTERM): the stage saved its work and no later stage ran; rerun the same command
to resume (launch/slurm_gpu.sbatch requeues on it).
"""

from __future__ import annotations

import logging as pylogging
import os
import sys
import traceback

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from retformer_jax import atomic_io, config_keys, errors, preemption, stages
from retformer_jax.stages import preflight

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (a Python file with get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for stage outputs, checkpoints and metrics.")
flags.DEFINE_bool("verbose", False, "On an error, print the traceback too (also: "
                  "RETFORMER_VERBOSE=1).")
flags.DEFINE_bool("list_keys", False, "Print every config key with its default (of --config "
                  "when given) and its doc from configs/common.py, then exit.")

CONFIG_RECORD = "config.json"  # WORKDIR/config.json: the config of the latest run (predict reads it)


def usage() -> str:
  """The --help text: the command, the stages with one line each, where the keys are."""
  width = max(len(n) for n in stages.STAGES)
  rows = "\n".join(f"  {n:<{width}}  {stages.SUMMARIES.get(n, '')}" for n in stages.STAGES)
  return f"""Runs the RetFormer / RetLLM pipeline, stage by stage, each cached in the workdir.

  python -m retformer_jax.main --config=configs/demo.py --workdir=DIR [--config.KEY=VALUE ...]

Stages (config.stages runs them in this order; a subset with --config.stages="('train','eval')"):
{rows}

Every config key is declared, with its default and a comment, in configs/common.py; list them
all with `python -m retformer_jax.main --list_keys [--config=FILE]`. Predict single images with
a trained workdir: `python -m retformer_jax.predict --workdir=DIR IMAGE...`.

Exit statuses: 0 done; 2 a mistake to fix (one line on stderr; --verbose adds the traceback);
75 preempted (rerun the same command to resume).
"""


def _maybe_initialize_distributed() -> None:
  """Joins a multi-process job when the launcher says there is one.

  TPU VMs, SLURM and our launch scripts set the environment that
  `jax.distributed.initialize()` auto-detects; an explicit coordinator can be given through
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    if env.get("RETFORMER_CPU_COLLECTIVES"):
      jax.config.update("jax_cpu_collectives_implementation", env["RETFORMER_CPU_COLLECTIVES"])
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]))
  elif any(k in env for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
    if int(env.get("SLURM_NTASKS", env.get("OMPI_COMM_WORLD_SIZE", "2"))) > 1:
      jax.distributed.initialize()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.list_keys:
    _list_keys()
    return
  missing = [f"--{n}" for n in ("config", "workdir") if FLAGS[n].value is None]
  if missing:
    raise app.UsageError(f"{' and '.join(missing)} required, e.g. --config=configs/demo.py "
                         "--workdir=/tmp/retformer_demo (see --help).")

  try:
    config = FLAGS.config
    names = tuple(config.stages)
  except OSError as e:
    raise app.UsageError(f"--config could not be loaded: {e}") from None
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  _expand_home(config)
  try:
    # Fail on a typo or a config that would give wrong numbers before joining a job.
    stages.check_names(names)
    preflight.check(config, names)
    _maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    _record_config(config, workdir)
    logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)
    with preemption.watching():
      for name in names:
        logging.info("=== stage %s ===", name)
        stages.get(name)(config, workdir)
        preemption.check(f"the end of stage {name!r}")
  except errors.Preempted as e:
    _stop(errors.EXIT_PREEMPTED, f"{name}: {e}")
  except (errors.UserError, FileNotFoundError, NotADirectoryError) as e:
    if _verbose():
      traceback.print_exc()
    _stop(errors.EXIT_USAGE, f"ERROR {errors.one_line(e)}")


def _record_config(config, workdir: str) -> None:
  """WORKDIR/config.json: the full config of this run, read back by predict (process 0; not
  for a run without stages, which leaves the workdir as it was)."""
  if config.stages and jax.process_index() == 0:
    atomic_io.write_json(os.path.join(workdir, CONFIG_RECORD), config.to_dict(), indent=2)


def _list_keys() -> None:
  config_file = config_flags.get_config_filename(FLAGS["config"]) if FLAGS["config"].value \
      is not None else None
  common = config_keys.find_common(config_file)
  if common is None:
    raise app.UsageError("configs/common.py was not found (beside --config, in this checkout, "
                         "or under the working directory); run from the repository.")
  config = FLAGS.config if config_file else config_keys.load_common(common)
  sys.stdout.write(config_keys.listing(config, config_keys.docs(common),
                                       os.path.relpath(common)))


def _expand_home(config) -> None:
  """`--config.clip.path=~/clip`: the shell leaves a `~` after `=` alone, so paths given that
  way are expanded here (every string value that starts with `~/`)."""
  for key, value in config.items():
    if hasattr(value, "items"):
      _expand_home(value)
    elif isinstance(value, str) and value.startswith("~/"):
      config[key] = os.path.expanduser(value)


def _verbose() -> bool:
  return FLAGS.verbose or os.environ.get("RETFORMER_VERBOSE", "") not in ("", "0")


def _stop(status: int, line: str) -> None:
  if status == errors.EXIT_USAGE and not _verbose():
    line += "  (--verbose shows the traceback)"
  logging.flush()
  sys.stderr.write(line + "\n")
  sys.stderr.flush()
  sys.exit(status)


def _parse_flags(argv):
  """absl flag parsing, with config-override mistakes reported in one line, not a traceback."""
  try:
    return FLAGS(argv)
  except SystemExit:
    if any(a in ("-h", "-?", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
      sys.exit(0)  # absl exits 1 after printing the help asked for; that is no failure
    raise
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpfull to see all flags.\n")
  except (KeyError, AttributeError) as e:
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    detail = e
    while isinstance(detail, BaseException) and detail.args:
      detail = detail.args[0]
    detail = str(detail).replace("\n", " ")
    sys.stderr.write(
        f"FATAL Unknown config key {detail} in one of {overrides}. Every key is declared in the "
        "config file (see configs/common.py for all of them); check the spelling and the "
        "section, e.g. --config.train.lr=1e-4.\n")
  sys.exit(2)


def run() -> None:
  # Libraries that log their own probing at INFO (faiss tries AVX-512/AVX2 builds first).
  for name in ("jax._src.xla_bridge", "faiss.loader"):
    pylogging.getLogger(name).setLevel(pylogging.WARNING)
  # absl's --help prints the __main__ module's docstring: make it the usage text.
  sys.modules["__main__"].__doc__ = usage()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
