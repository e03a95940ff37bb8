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

How the stage scores these items (retllm/prompts.py, retllm/item_embed.py):
- CLIP embeds `Item.plain_text` (the text without MMEB's `<|image_1|>` placeholder) and the
  image; an item holding both is their weighted sum, as the reference's MMEB driver mixes them.
- The MLLM sees an image alone against a text alone with the match question of Flickr30k /
  COCO; any other pair as the reference's M-BEIR / MMEB driver lays it out: the images first
  ("Query image", "Candidate image"), then one True/False question naming the texts.
  (`Item.segments()` keeps the placeholder's position, for prompts of one's own.)
- SugarCrepe: pointwise P("True") per caption, and listwise as the reference (retllm.listwise,
  the image and [negative, positive], the MLLM names one).
- Classification: CLIP embeds `ClassificationSet.prompts` ("a photo of a {name}."); the MLLM is
  shown the class name as the caption of the match question.
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
