"""What a training run was made from, kept beside its checkpoints (WORKDIR/checkpoints/run.json).

Checkpoints are reused only by a run with the same inputs: every config key that can shape the
model (model, train and loss settings, data, KB and index settings, seed) and the fingerprints
of the neighbours it trains and validates on. A rerun with other inputs stops with one line that
lists the changed keys, unless `train.changed_inputs="new_run"` moves the old run aside. `eval`
reads the record too: it never reports a run that did not finish, and the model it builds must
be the one that was trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

from retformer_jax import atomic_io
from retformer_jax import errors

RECORD = "run.json"

# Keys that do not change what is learnt: where things live, how fast, what is logged, and
# the settings of other stages. Everything else in the config is part of a run's identity.
_IGNORED_PREFIXES = (
    "stages", "mesh.", "eval.", "checkpoint.", "embed.", "retllm.", "train.log_every",
    "train.changed_inputs", "data.num_workers", "data.cache_dir", "data.tfds_data_dir",
    "data.manual_dir", "data.lt_splits_dir", "data.eval_splits", "clip.path", "clip.batch_size",
    "clip.scan_layers", "neighbors.chunk_size", "neighbors.splits", "index.exact.query_batch",
    "index.faiss.mmap",
)
# Keys that decide the parameter tree: eval must build exactly this model.
_MODEL_PREFIXES = ("model.", "neighbors.k")


class StaleCheckpointsError(errors.UserError):
  """The checkpoints on disk were trained from other inputs than this run's."""


class UnfinishedTrainingError(errors.UserError):
  """The checkpoints on disk belong to a run that stopped before its last step."""


def _flatten(d, prefix: str = "") -> dict:
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def _ignored(key: str) -> bool:
  return any(key == p or key.startswith(p) for p in _IGNORED_PREFIXES)


def run_inputs(config, neighbor_fingerprints: dict[str, str]) -> dict:
  """The flat description of a training run: config keys that shape it + neighbour hashes."""
  flat = {k: v for k, v in _flatten(config.to_dict()).items() if not _ignored(k)}
  for split, fp in sorted(neighbor_fingerprints.items()):
    flat[f"neighbours of '{split}'"] = fp
  return json.loads(json.dumps(flat, default=str))


def fingerprint(inputs: dict) -> str:
  blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _show(value) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def describe_changes(old: dict, new: dict) -> list[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    if old.get(key, "<unset>") != new.get(key, "<unset>"):
      if key.startswith("neighbours of"):
        out.append(f"{key} (KB, index or query store changed)")
      else:
        before = _show(old[key]) if key in old else "<unset>"
        after = _show(new[key]) if key in new else "<unset>"
        out.append(f"{key}: {before} -> {after}")
  return out


def read(ckpt_dir: str) -> dict | None:
  path = os.path.join(ckpt_dir, RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def has_checkpoints(ckpt_dir: str) -> bool:
  return os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))


def _set_aside(workdir: str, ckpt_dir: str, old_fp: str) -> str:
  """Moves the old run's checkpoints and curves to WORKDIR/runs/<fingerprint>-<time>/."""
  dest = os.path.join(workdir, "runs", f"{old_fp}-{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(dest, exist_ok=True)
  shutil.move(ckpt_dir, os.path.join(dest, "checkpoints"))
  curves = os.path.join(workdir, "train")
  if os.path.isdir(curves):
    shutil.move(curves, os.path.join(dest, "train"))
  return dest


def prepare(workdir: str, ckpt_dir: str, inputs: dict, total_steps: int, policy: str,
            is_writer: bool = True) -> dict:
  """Checks the record of `ckpt_dir` against `inputs` before any checkpoint is read.

  Same inputs: the record is returned (the run resumes or is already done). No checkpoints:
  a new record is written. Other inputs: StaleCheckpointsError listing the changed keys, or,
  with policy "new_run", the old run is moved aside and a new record written.
  """
  if policy not in ("error", "new_run"):
    raise errors.ConfigError(f"config.train.changed_inputs={policy!r}; use 'error' or 'new_run'.")
  fp = fingerprint(inputs)
  record = read(ckpt_dir)
  exists = has_checkpoints(ckpt_dir)
  if exists and (record is None or record["fingerprint"] != fp):
    if record is None:
      changes = ["no run record (checkpoints written by an older version)"]
      old_fp = "unrecorded"
    else:
      changes = describe_changes(record["inputs"], inputs)
      old_fp = record["fingerprint"]
    if policy == "error":
      raise StaleCheckpointsError(
          f"{ckpt_dir} holds a run trained from other inputs ({'; '.join(changes)}). Use a new "
          "--workdir, or pass --config.train.changed_inputs=new_run to move that run to "
          f"{os.path.join(workdir, 'runs')}/ and train afresh.")
    if is_writer:
      dest = _set_aside(workdir, ckpt_dir, old_fp)
      logging.getLogger(__name__).warning(
          "Inputs changed (%s): previous run moved to %s; training afresh.", "; ".join(changes),
          dest)
    record = None
  if record is None or not exists:
    record = {"fingerprint": fp, "inputs": inputs, "total_steps": int(total_steps),
              "finished": False}
    if is_writer:
      atomic_io.write_json(os.path.join(ckpt_dir, RECORD), record)
  return record


def mark_finished(ckpt_dir: str, record: dict, step: int) -> dict:
  record = dict(record, finished=True, finished_step=int(step))
  atomic_io.write_json(os.path.join(ckpt_dir, RECORD), record)
  return record


def for_eval(ckpt_dir: str, config, explicit_step: bool) -> dict:
  """The record of the run `eval` is about to report, checked against this config's model.

  A run that did not finish is refused unless a step was asked for explicitly
  (config.checkpoint.step >= 0); a model config unlike the trained one is refused always.
  """
  record = read(ckpt_dir)
  if not has_checkpoints(ckpt_dir):
    raise errors.UserError(f"No checkpoint in {ckpt_dir}; run the train stage first.")
  if record is None:
    raise StaleCheckpointsError(
        f"{ckpt_dir} has no run record (written by an older version), so what it was trained "
        "from is unknown. Retrain in a new --workdir, or with "
        "--config.train.changed_inputs=new_run.")
  want = {k: v for k, v in run_inputs(config, {}).items() if k.startswith(_MODEL_PREFIXES)}
  have = {k: v for k, v in record["inputs"].items() if k.startswith(_MODEL_PREFIXES)}
  changes = describe_changes(have, want)
  if changes:
    raise StaleCheckpointsError(
        f"The checkpoints in {ckpt_dir} are of another model than this config builds "
        f"({'; '.join(changes)}). Evaluate with the settings it was trained with, or rerun "
        "train (use a new --workdir or --config.train.changed_inputs=new_run).")
  if not record.get("finished") and not explicit_step:
    raise UnfinishedTrainingError(
        f"The run in {ckpt_dir} has not finished training (its record asks for "
        f"{record['total_steps']} steps); rerun the train stage to finish it, or pass "
        "--config.checkpoint.step=N to evaluate step N as it is.")
  return record
