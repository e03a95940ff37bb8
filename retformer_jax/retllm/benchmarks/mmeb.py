"""MMEB (the VLM2Vec evaluation set): 36 image subsets in four meta-tasks, read with pyarrow.

data_dir = the folder holding the git clone of the data set and its unzipped image archive:
  MMEB-eval/<Subset>/*.parquet   (TIGER-Lab/MMEB-eval: `test-00000-of-00001.parquet`)
  eval_images/<image path>       (`unzip images.zip -d eval_images/`)
Columns: qry_text (may hold `<|image_1|>`), qry_img_path ("" = text-only query), tgt_text
[list], tgt_img_path [list, "" = text-only candidate]; the first target is the positive.
Metric: hit@1 per subset, and the mean.

The subset -> meta-task table is VLM2Vec's own grouping (TIGER-AI-Lab/VLM2Vec,
experiments/report_score_v2.py, `modality2dataset["image"]`, listed there in this order:
10 classification, 10 VQA, 12 retrieval, 4 visual grounding).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from retformer_jax.retllm.benchmarks import items

CLASSIFICATION, VQA, RETRIEVAL, GROUNDING = "classification", "vqa", "retrieval", "grounding"
META_TASKS = (CLASSIFICATION, VQA, RETRIEVAL, GROUNDING)

SUBSET_META_TASK = {
    **dict.fromkeys(("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397",
                     "Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"),
                    CLASSIFICATION),
    **dict.fromkeys(("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
                     "ScienceQA", "VizWiz", "GQA", "TextVQA"), VQA),
    **dict.fromkeys(("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i",
                     "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN",
                     "EDIS"), RETRIEVAL),
    **dict.fromkeys(("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"), GROUNDING),
}
SUBSETS = tuple(SUBSET_META_TASK)
COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
TABLE_DIR, IMAGE_DIR = "MMEB-eval", "eval_images"
_FIX = ("point data_dir at the folder holding MMEB-eval/<Subset>/*.parquet (git clone of "
        "TIGER-Lab/MMEB-eval) and eval_images/ (unzip images.zip -d eval_images/).")


def present_subsets(data_dir: str) -> list[str]:
  """The table's subsets that have parquet files under data_dir, in table order."""
  return [s for s in SUBSETS if glob.glob(os.path.join(data_dir, TABLE_DIR, s, "*.parquet"))]


def _image(data_dir: str, rel) -> str | None:
  return os.path.join(data_dir, IMAGE_DIR, rel) if rel else None


class _Queries(Sequence):
  """Query i as an Item, built from the parquet columns on access."""

  def __init__(self, data_dir: str, texts, images):
    self._dir, self._texts, self._images = data_dir, texts, images

  def __len__(self) -> int:
    return len(self._texts)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return items.Item(text=self._texts[i].as_py() or "",
                      image=_image(self._dir, self._images[i].as_py()))


class _Candidates(_Queries):
  """Query i's candidate list as Items, built on access."""

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return [items.Item(text=t or "", image=_image(self._dir, p))
            for t, p in zip(self._texts[i].as_py() or [], self._images[i].as_py() or [])]


def read_subset(data_dir: str, subset: str) -> items.MMEBTask:
  import pyarrow as pa
  import pyarrow.compute as pc
  import pyarrow.parquet as pq

  if subset not in SUBSET_META_TASK:
    raise items.BenchmarkLayoutError(f"Unknown MMEB subset {subset!r}; choose from "
                                     f"{', '.join(SUBSETS)}.")
  folder = os.path.join(data_dir, TABLE_DIR, subset)
  files = sorted(glob.glob(os.path.join(folder, "*.parquet")))
  if not files:
    raise items.BenchmarkLayoutError(f"MMEB subset {subset}: no {TABLE_DIR}/{subset}/*.parquet "
                                     f"under {data_dir!r}; {_FIX}")
  tables = []
  for path in files:
    table = pq.read_table(path)
    lacking = [c for c in COLUMNS if c not in table.column_names]
    if lacking:
      raise items.BenchmarkLayoutError(f"{path} has no column {lacking[0]!r} (columns: "
                                       f"{', '.join(table.column_names)}).")
    tables.append(table.select(list(COLUMNS)))
  table = pa.concat_tables(tables, promote_options="permissive")
  q_text, q_img, t_text, t_img = (table.column(c).combine_chunks() for c in COLUMNS)
  n_text = pc.fill_null(pc.list_value_length(t_text), 0).to_numpy(zero_copy_only=False)
  n_img = pc.fill_null(pc.list_value_length(t_img), 0).to_numpy(zero_copy_only=False)
  bad = (n_text != n_img).nonzero()[0]
  if len(bad):
    i = int(bad[0])
    raise items.BenchmarkLayoutError(f"MMEB {subset} row {i}: {n_text[i]} tgt_text but "
                                     f"{n_img[i]} tgt_img_path entries.")
  empty = (n_text == 0).nonzero()[0]
  if len(empty):
    raise items.BenchmarkLayoutError(f"MMEB {subset}: query {int(empty[0])} has no candidates.")
  rels = set(pc.unique(q_img).to_pylist()) | set(pc.unique(pc.list_flatten(t_img)).to_pylist())
  paths = [_image(data_dir, r) for r in rels if r]
  if paths:
    items.require_dir(os.path.join(data_dir, IMAGE_DIR), "MMEB eval_images/", _FIX)
  items.require_images(paths, f"MMEB {subset} ({IMAGE_DIR}/)", _FIX)
  return items.MMEBTask(name=subset, meta_task=SUBSET_META_TASK[subset],
                        queries=_Queries(data_dir, q_text, q_img),
                        candidates=_Candidates(data_dir, t_text, t_img))


def load(data_dir: str, *, subsets: Sequence[str] | None = None) -> list[items.MMEBTask]:
  """The named subsets (default: all 36 of the table, each required), in the order given."""
  items.require_dir(data_dir, "MMEB", _FIX)
  items.require_dir(os.path.join(data_dir, TABLE_DIR), f"MMEB {TABLE_DIR}/", _FIX)
  return [read_subset(data_dir, s) for s in (SUBSETS if subsets is None else subsets)]
