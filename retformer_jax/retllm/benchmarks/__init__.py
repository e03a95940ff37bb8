"""Readers of every benchmark family RetLLM is evaluated on, each from its real download.

    from retformer_jax.retllm import benchmarks
    data = benchmarks.load("urban1k", "/data/Urban1k")            # RetrievalSet
    tasks = benchmarks.load("mmeb", "/data/mmeb", subsets=["OK-VQA"])  # [MMEBTask]

name          data_dir holds                                         returns
flickr30k     dataset_flickr30k.json + flickr30k-images/             RetrievalSet
coco          dataset_coco.json + val2014/                           RetrievalSet
sharegpt4v    share-captioner_coco_lcs_sam_1246k_1107.json + images  RetrievalSet (first 1,000)
urban1k       image/N.jpg + caption/N.txt                            RetrievalSet
sugarcrepe    data/<subset>.json + val2017/                          [PairChoiceSet] per subset
mmeb          MMEB-eval/<Subset>/*.parquet + eval_images/            [MMEBTask] per subset
classification  label_idx.json + dataset_list.json                   ClassificationSet
(labelled TFDS sets become a ClassificationSet through classification.from_splits.)

Prompts proposed for mixed items (the MLLM sees an Item as `Item.segments()`):
- An MMEB text's `<|image_1|>` placeholder (Phi-3-V's image token) is where the item's image
  goes: the Qwen chat content becomes [text before, {"type": "image"}, text after] (blank parts
  dropped); an item with an image and no placeholder puts the image first; a placeholder with no
  image is removed. `Item.plain_text` is the text without placeholders (what CLIP embeds).
- Pointwise match of a query and a candidate, both possibly mixed: one user turn
  ["Query:", *query segments, "Candidate:", *candidate segments, "Does the candidate match the
  query? Please directly output True or False"], scored like the caption prompt by P("True").
  A text->image pair with a plain caption and a plain image reduces to the reference prompt.
- SugarCrepe: the image, then both captions listed ("1. ... 2. ..."), the MLLM names the one
  that matches (the reference's listwise choice); pointwise P("True") per caption is the
  alternative.
- Classification: CLIP embeds `ClassificationSet.prompts` ("a photo of a {name}."); the MLLM is
  shown the class name as the caption of the match prompt.
"""

from __future__ import annotations

import json
import os

from retformer_jax.retllm import caption_sets
from retformer_jax.retllm.benchmarks import classification, long_captions, mmeb, sugarcrepe
from retformer_jax.retllm.benchmarks.items import (BenchmarkLayoutError, ClassificationSet,
                                                   Item, MMEBTask, PairChoiceSet, RetrievalSet,
                                                   retrieval_set)

KARPATHY = {"flickr30k": ("dataset_flickr30k.json", "flickr30k-images"),
            "coco": ("dataset_coco.json", "")}
NAMES = ("flickr30k", "coco", "sharegpt4v", "urban1k", "sugarcrepe", "mmeb", "classification")


def karpathy(name: str, data_dir: str, *, split: str = "test",
             captions_per_image: int = 5) -> RetrievalSet:
  """A Karpathy split laid out as downloaded: the json and the image folder side by side."""
  json_name, images = KARPATHY[name]
  path = os.path.join(data_dir, json_name)
  if not os.path.isfile(path):
    raise BenchmarkLayoutError(f"{name}: {json_name} not found in {data_dir!r}; put the "
                               "Karpathy split file next to the images.")
  data = caption_sets.karpathy(path, os.path.join(data_dir, images) if images else data_dir,
                               split=split, captions_per_image=captions_per_image, name=name)
  return _with_paths(data, path, data_dir, images, split)


def _with_paths(data, path, data_dir, images, split) -> RetrievalSet:
  with open(path) as f:
    entries = [e for e in json.load(f)["images"] if e.get("split") == split]
  root = os.path.join(data_dir, images) if images else data_dir
  paths = [os.path.join(root, e.get("filepath", ""), e["filename"]) for e in entries]
  return RetrievalSet(name=data.name, num_images=data.num_images, load_image=data.load_image,
                      captions=data.captions, caption_image=data.caption_image,
                      image_paths=paths)


def load(name: str, data_dir: str, **options):
  """The benchmark `name` read from `data_dir` (see the table above); options per reader:
  flickr30k/coco: split, captions_per_image; sharegpt4v: count, json_name; sugarcrepe,
  mmeb: subsets; classification: prompt, name."""
  readers = {
      "flickr30k": lambda: karpathy("flickr30k", data_dir, **options),
      "coco": lambda: karpathy("coco", data_dir, **options),
      "sharegpt4v": lambda: long_captions.sharegpt4v(data_dir, **options),
      "urban1k": lambda: long_captions.urban1k(data_dir, **options),
      "sugarcrepe": lambda: sugarcrepe.load(data_dir, **options),
      "mmeb": lambda: mmeb.load(data_dir, **options),
      "classification": lambda: classification.read_folder(data_dir, **options),
  }
  if name not in readers:
    raise BenchmarkLayoutError(f"Unknown benchmark {name!r}; choose one of {', '.join(NAMES)}.")
  return readers[name]()


__all__ = ["load", "karpathy", "NAMES", "Item", "RetrievalSet", "PairChoiceSet", "MMEBTask",
           "ClassificationSet", "BenchmarkLayoutError", "retrieval_set", "classification",
           "long_captions", "mmeb", "sugarcrepe"]
