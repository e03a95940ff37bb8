"""SugarCrepe: does the model prefer an image's caption over a hard negative?

data_dir = the folder holding data/*.json and val2017/ (COCO 2017 validation images):
  data/<subset>.json   {"<id>": {"filename": "000000xxxxxx.jpg", "caption", "negative_caption"}}
  val2017/<filename>
Accuracy per subset = how often the positive caption wins.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from retformer_jax.retllm.benchmarks import items

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att",
           "swap_obj")
_FIELDS = ("filename", "caption", "negative_caption")


def read_subset(data_dir: str, subset: str) -> items.PairChoiceSet:
  fix = ("point data_dir at the SugarCrepe folder holding data/<subset>.json and the COCO "
         "val2017/ images.")
  path = items.require_file(os.path.join(data_dir, "data", f"{subset}.json"),
                            f"SugarCrepe subset {subset}", fix)
  with open(path, encoding="utf8") as f:
    try:
      doc = json.load(f)
    except json.JSONDecodeError as e:
      raise items.BenchmarkLayoutError(f"{path} is not valid JSON ({e}).") from e
  if not isinstance(doc, dict) or not doc:
    raise items.BenchmarkLayoutError(f"{path} is not a non-empty {{id: entry}} object.")
  ids, paths, pos, neg = [], [], [], []
  for key, entry in doc.items():
    lacking = [k for k in _FIELDS if not isinstance(entry, dict) or k not in entry]
    if lacking:
      raise items.BenchmarkLayoutError(f"{path}: entry {key!r} has no {lacking[0]!r} field.")
    ids.append(str(key))
    paths.append(os.path.join(data_dir, "val2017", entry["filename"]))
    pos.append(str(entry["caption"]))
    neg.append(str(entry["negative_caption"]))
  items.require_images(paths, f"SugarCrepe {subset} (val2017/)", fix)
  return items.PairChoiceSet(name="sugarcrepe", subset=subset, ids=ids, image_paths=paths,
                             positives=pos, negatives=neg)


def load(data_dir: str, *, subsets: Sequence[str] = SUBSETS) -> list[items.PairChoiceSet]:
  """The named subsets (all 7 by default), in the order given."""
  unknown = [s for s in subsets if s not in SUBSETS]
  if unknown:
    raise items.BenchmarkLayoutError(f"Unknown SugarCrepe subset {unknown[0]!r}; choose from "
                                     f"{', '.join(SUBSETS)}.")
  items.require_dir(data_dir, "SugarCrepe", "point data_dir at the folder holding data/ and "
                    "val2017/.")
  items.require_dir(os.path.join(data_dir, "val2017"), "SugarCrepe val2017/",
                    "unzip COCO val2017.zip next to data/.")
  return [read_subset(data_dir, s) for s in subsets]
