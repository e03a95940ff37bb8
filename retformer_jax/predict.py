"""Predicts single images with a trained workdir: `python -m retformer_jax.predict`.

  python -m retformer_jax.predict --workdir=/tmp/retformer_demo cat.jpg dog.png [--json]

Prints, per image, the top-5 classes with their probabilities and the captions of the 5
neighbours the model attended to most (see retformer_jax/classifier.py for what "attended"
means); --json prints one JSON object per image instead. The config is the one recorded in the
workdir; the checkpoint the one `eval` reports (--step picks another). Exit status 2 with one
line on stderr for a mistake to fix (no such workdir or image, an unfinished run, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from retformer_jax import errors


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m retformer_jax.predict", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="workdir of a finished training run")
  p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
  p.add_argument("--json", action="store_true", help="one JSON object per image, per line")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step (default: config.checkpoint.step of the run)")
  p.add_argument("--top_k", type=int, default=5, help="classes shown per image")
  p.add_argument("--neighbors", type=int, default=5, help="neighbours shown per image")
  p.add_argument("--verbose", action="store_true", help="on an error, print the traceback too")
  return p


def read_image(path: str):
  """uint8 [H, W, 3] of an image file; a missing or unreadable file is a one-line error."""
  from retformer_jax.data import image_decode

  try:
    with open(path, "rb") as f:
      return image_decode.decode_image(f.read())
  except OSError as e:
    if isinstance(e, FileNotFoundError) or not os.path.exists(path):
      raise errors.UserError(f"Image {path} does not exist.") from e
    raise errors.UserError(f"Image {path} cannot be read as an image ({e}).") from e


def format_text(path: str, prediction) -> str:
  lines = [f"{path}"]
  lines += [f"  {prob:7.2%}  {name}" for name, prob in prediction.top_k]
  if prediction.neighbors:
    lines.append("  most-attended neighbours (attention, caption):")
    lines += [f"    {n.attention:.3f}  {n.caption}" for n in prediction.neighbors]
  return "\n".join(lines)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    images = [read_image(p) for p in args.images]
    from retformer_jax.classifier import Classifier  # JAX and the model: after the cheap checks

    clf = Classifier.from_workdir(args.workdir, step=args.step)
    predictions = clf.predict(images, top_k=args.top_k, num_neighbors=args.neighbors)
  except (errors.UserError, FileNotFoundError) as e:
    if args.verbose:
      import traceback
      traceback.print_exc()
    sys.stderr.write(f"ERROR {errors.one_line(e)}\n")
    return errors.EXIT_USAGE
  for path, prediction in zip(args.images, predictions):
    if args.json:
      print(json.dumps({"image": path, **prediction.to_json()}))
    else:
      print(format_text(path, prediction))
  return 0


if __name__ == "__main__":
  sys.exit(main())
