"""Long-caption retrieval sets: ShareGPT4V-1k and Urban1k, one long caption per image.

ShareGPT4V-1k (data_dir = the folder holding the json and the images at its relative paths):
  share-captioner_coco_lcs_sam_1246k_1107.json   [{"image": "coco/train2017/....jpg",
                                                    "conversations": [{human}, {"value": caption}]}]
  The first 1,000 entries; caption = conversations[1].value with newlines turned into spaces
  (as the reference does); image = data_dir/image.

Urban1k (data_dir = the folder holding image/ and caption/):
  image/N.jpg + caption/N.txt; caption = the file's first line, stripped. Pairs are taken in
  numeric order of N (the reference walks os.listdir order, which is file-system dependent;
  Recall@K does not depend on the order).
"""

from __future__ import annotations

import json
import os
import re

from retformer_jax.retllm.benchmarks import items

SHAREGPT4V_JSON = "share-captioner_coco_lcs_sam_1246k_1107.json"
# The name the reference code reads; the same entries with broken ones removed.
SHAREGPT4V_JSON_CLEANED = "share-captioner_coco_lcs_sam_1246k_1107_cleaned.json"
SHAREGPT4V_COUNT = 1000


def sharegpt4v(data_dir: str, *, count: int = SHAREGPT4V_COUNT,
               json_name: str = "") -> items.RetrievalSet:
  """The first `count` entries of the ShareGPT4V share-captioner json."""
  fix = ("point data_dir at the ShareGPT4V data folder holding "
         f"{SHAREGPT4V_JSON} and the image folders (coco/, sam/, ...) it names.")
  items.require_dir(data_dir, "ShareGPT4V", fix)
  names = [json_name] if json_name else [SHAREGPT4V_JSON, SHAREGPT4V_JSON_CLEANED]
  found = [n for n in names if os.path.isfile(os.path.join(data_dir, n))]
  if not found:
    raise items.BenchmarkLayoutError(f"ShareGPT4V: {' or '.join(names)} not found in "
                                     f"{data_dir!r}; {fix}")
  path = os.path.join(data_dir, found[0])
  with open(path, encoding="utf8") as f:
    try:
      doc = json.load(f)
    except json.JSONDecodeError as e:
      raise items.BenchmarkLayoutError(f"{path} is not valid JSON ({e}).") from e
  if not isinstance(doc, list):
    raise items.BenchmarkLayoutError(f"{path} is not a list of entries; is it the "
                                     "share-captioner json?")
  entries = doc[:count] if count > 0 else doc
  paths, captions = [], []
  for i, entry in enumerate(entries):
    try:
      rel = entry["image"]
      caption = entry["conversations"][1]["value"]
    except (KeyError, IndexError, TypeError):
      raise items.BenchmarkLayoutError(
          f"{path}: entry {i} lacks 'image' or 'conversations[1].value'.") from None
    paths.append(os.path.join(data_dir, rel))
    captions.append(str(caption).replace("\n", " "))
  items.require_images(paths, f"ShareGPT4V ({found[0]})", fix)
  return items.retrieval_set("sharegpt4v", paths, captions)


_NUMBER = re.compile(r"^(\d+)\.txt$")


def urban1k(data_dir: str) -> items.RetrievalSet:
  """Every caption/N.txt with its image/N.jpg."""
  fix = "point data_dir at the Urban1k folder that holds image/ and caption/."
  items.require_dir(data_dir, "Urban1k", fix)
  for sub in ("image", "caption"):
    items.require_dir(os.path.join(data_dir, sub), f"Urban1k {sub}/", fix)
  names = [n for n in os.listdir(os.path.join(data_dir, "caption")) if n.endswith(".txt")]
  if not names:
    raise items.BenchmarkLayoutError(f"Urban1k: no caption/*.txt under {data_dir!r}; {fix}")
  names.sort(key=lambda n: (0, int(_NUMBER.match(n)[1])) if _NUMBER.match(n) else (1, n))
  paths, captions = [], []
  for name in names:
    with open(os.path.join(data_dir, "caption", name), encoding="utf8") as f:
      lines = f.readlines()
    if not lines:
      raise items.BenchmarkLayoutError(f"Urban1k: caption/{name} is empty.")
    captions.append(lines[0].strip())
    paths.append(os.path.join(data_dir, "image", name[:-len(".txt")] + ".jpg"))
  items.require_images(paths, "Urban1k image/", fix)
  return items.retrieval_set("urban1k", paths, captions)
