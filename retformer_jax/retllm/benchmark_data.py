"""The data set of a RetLLM run, by `config.retllm.dataset`, from `config.retllm.data_dir`.

data_dir is the folder exactly as the data set's own instructions leave it (see
retllm.benchmarks for each layout); a missing or misshapen layout is a one-line
BenchmarkLayoutError naming what is missing. With `retllm.demo_data` and data_dir "", the demo
set of that benchmark is first written in its real layout under WORKDIR/retllm_data/<name>
(demo/retllm_sets.py) and read back through the same reader.

family     datasets                                                 what load() returns
retrieval  flickr30k coco coco_tfds demo sharegpt4v urban1k        CaptionSet / RetrievalSet
choice     sugarcrepe                                               [PairChoiceSet]
mmeb       mmeb                                                     [MMEBTask]
classify   classification                                           ClassificationSet
"""

from __future__ import annotations

import os

import ml_collections

from retformer_jax.data import registry
from retformer_jax.demo import dataset as demo_dataset
from retformer_jax.demo import retllm_sets
from retformer_jax.retllm import caption_sets
from retformer_jax.retllm import benchmarks
from retformer_jax.retllm.benchmarks import classification, long_captions, mmeb, sugarcrepe

FAMILIES = {"flickr30k": "retrieval", "coco": "retrieval", "coco_tfds": "retrieval",
            "demo": "retrieval", "sharegpt4v": "retrieval", "urban1k": "retrieval",
            "sugarcrepe": "choice", "mmeb": "mmeb", "classification": "classify"}


def family(name: str) -> str:
  if name not in FAMILIES:
    raise benchmarks.BenchmarkLayoutError(
        f"Unknown config.retllm.dataset {name!r}; choose one of {', '.join(FAMILIES)}.")
  return FAMILIES[name]


def subsets(rc: ml_collections.ConfigDict, default) -> list[str]:
  """config.retllm.subsets ("a,b"; "" = `default`)."""
  names = [s.strip() for s in rc.subsets.split(",") if s.strip()]
  return names or list(default)


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """config.retllm.data_dir, or the demo set written under the workdir (retllm.demo_data)."""
  rc = config.retllm
  if rc.data_dir or not rc.demo_data or rc.dataset in ("demo", "coco_tfds"):
    return os.path.expanduser(rc.data_dir)
  if rc.dataset not in retllm_sets.NAMES:
    raise benchmarks.BenchmarkLayoutError(f"No demo set for {rc.dataset!r}.")
  spec = demo_dataset.DemoSpec.from_config(config.data.demo)
  count = rc.num_images if rc.num_images > 0 else 40
  return retllm_sets.write(rc.dataset, os.path.join(workdir, "retllm_data", rc.dataset), spec,
                           count=count)


def load(config: ml_collections.ConfigDict, folder: str):
  """The data set named by config.retllm.dataset read from `folder` (see the table above)."""
  rc = config.retllm
  name = rc.dataset
  fam = family(name)
  if name in ("coco_tfds", "demo") or (name in ("flickr30k", "coco") and rc.karpathy_json):
    return caption_sets.load(rc, config.data.demo)  # the caption sets' own keys
  if not folder and not (fam == "classify" and rc.class_source == "data"):
    raise benchmarks.BenchmarkLayoutError(
        f"config.retllm.data_dir is empty: set it to the {name} folder as its download leaves "
        "it (README: RetLLM benchmarks), or run its demo set with configs/retllm_demo.py.")
  if fam == "retrieval":
    if name in ("flickr30k", "coco"):
      data = benchmarks.karpathy(name, folder, split=rc.split,
                                 captions_per_image=rc.captions_per_image)
    elif name == "sharegpt4v":
      data = long_captions.sharegpt4v(folder, count=rc.sharegpt4v_count)
    else:
      data = long_captions.urban1k(folder)
    return caption_sets.subset(data, rc.num_images)
  if fam == "choice":
    return sugarcrepe.load(folder, subsets=subsets(rc, sugarcrepe.SUBSETS))
  if fam == "mmeb":
    default = (retllm_sets.MMEB_SUBSETS if rc.demo_data and not rc.data_dir
               else mmeb.SUBSETS)
    return mmeb.load(folder, subsets=subsets(rc, default))
  if rc.class_source == "data":  # our labelled readers (TFDS, image folders, the demo)
    split = config.data.eval_splits[0] if config.data.eval_splits else "test"
    return classification.from_splits(registry.load(config.data), split=split,
                                      prompt=rc.class_prompt,
                                      many_above=config.eval.many_above,
                                      few_below=config.eval.few_below)
  if rc.class_source != "list":
    raise benchmarks.BenchmarkLayoutError(
        f"config.retllm.class_source {rc.class_source!r}: use list (data_dir's label_idx.json "
        "+ dataset_list.json) or data (config.data through our readers).")
  return classification.read_folder(folder, prompt=rc.class_prompt)
