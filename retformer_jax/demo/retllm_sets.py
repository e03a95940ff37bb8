"""Tiny RetLLM benchmark sets, each written in its benchmark's real on-disk layout.

    folder = retllm_sets.write("urban1k", "/tmp/urban1k_demo", DemoSpec())

The images and captions are the generated demo set's (demo/dataset.py, its test split), so a
RetLLM run on any benchmark family works on CPU in seconds with nothing downloaded, through the
same readers (retformer_jax.retllm.benchmarks) that read the real downloads:

  flickr30k   dataset_flickr30k.json + flickr30k-images/<id>.jpg   (Karpathy layout)
  coco        dataset_coco.json + val2014/COCO_val2014_<id>.jpg     (Karpathy layout)
  sharegpt4v  share-captioner_coco_lcs_sam_1246k_1107.json + coco/train2017/, sam/images/
  urban1k     image/N.jpg + caption/N.txt
  sugarcrepe  data/<subset>.json (all 7) + val2017/<id>.jpg
  mmeb        MMEB-eval/<Subset>/test-00000-of-00001.parquet + eval_images/<Subset>/...
  classification  label_idx.json + dataset_list.json + images/<class>/<n>.jpg

A write is deterministic in (name, spec, count), built in a temporary folder and renamed into
place; an existing complete folder from the same inputs is reused (a hidden stamp file records
them), one from other inputs is replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from retformer_jax import atomic_io
from retformer_jax.demo import dataset as demo_dataset

NAMES = ("flickr30k", "coco", "sharegpt4v", "urban1k", "sugarcrepe", "mmeb", "classification")
# One subset per meta-task, and both directions of the retrieval family.
MMEB_SUBSETS = ("ImageNet-1K", "OK-VQA", "MSCOCO_t2i", "MSCOCO_i2t", "MSCOCO")
SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel",
                      "swap_att", "swap_obj")
SHAREGPT4V_JSON = "share-captioner_coco_lcs_sam_1246k_1107.json"
STAMP = ".demo_set.json"
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class _Pair:
  image: np.ndarray
  caption: str
  label: int
  others: tuple[str, ...]  # captions of other test images of the same class


def _pairs(spec: demo_dataset.DemoSpec, count: int) -> list[_Pair]:
  """`count` test examples spread over the classes, with same-class captions for extras."""
  split = demo_dataset.DemoSplit(spec, "test")
  n = len(split)
  rows = np.unique(np.linspace(0, n - 1, min(count, n)).astype(np.int64))
  labels = split.true_labels
  out = []
  for r in rows:
    ex = split[int(r)]
    same = [int(j) for j in np.flatnonzero(labels == ex["true_label"]) if j != r][:4]
    out.append(_Pair(ex["image"], ex["text"], ex["true_label"],
                     tuple(split[j]["text"] for j in same)))
  return out


def _save(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, quality=95, subsampling=0)


def _dump(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf8") as f:
    json.dump(obj, f, indent=1)


def _long_caption(p: _Pair, name: str) -> str:
  """A paragraph (ShareGPT4V / Urban1k captions run to 100-250 words) with line breaks."""
  return "\n".join([p.caption, f"The {name} stands out against a striped background."]
                   + [f"Elsewhere: {o}" for o in p.others])


def _karpathy(folder: str, pairs, names, *, coco: bool) -> None:
  images = []
  for i, p in enumerate(pairs + pairs[:2]):
    split = "test" if i < len(pairs) else "train"
    sents = [p.caption, *p.others, *(["a picture of a " + names[p.label]] * 5)][:5]
    if coco:
      entry = {"filepath": "val2014", "filename": f"COCO_val2014_{100 + i:012d}.jpg",
               "cocoid": 100 + i}
      path = os.path.join(folder, "val2014", entry["filename"])
    else:
      entry = {"filename": f"{1000000 + i}.jpg"}
      path = os.path.join(folder, "flickr30k-images", entry["filename"])
    entry.update(split=split, imgid=i, sentids=list(range(5 * i, 5 * i + 5)), sentences=[
        {"raw": s, "tokens": s.lower().split(), "imgid": i, "sentid": 5 * i + j}
        for j, s in enumerate(sents)])
    images.append(entry)
    _save(path, p.image)
  _dump(os.path.join(folder, "dataset_coco.json" if coco else "dataset_flickr30k.json"),
        {"images": images, "dataset": "coco" if coco else "flickr30k"})


def _sharegpt4v(folder: str, pairs, names) -> None:
  entries = []
  for i, p in enumerate(pairs):
    rel = (f"coco/train2017/{i:012d}.jpg" if i % 2 == 0 else f"sam/images/sa_{i}.jpg")
    _save(os.path.join(folder, rel), p.image)
    entries.append({"id": os.path.splitext(os.path.basename(rel))[0], "image": rel,
                    "conversations": [
                        {"from": "human", "value": "<image>\nAnalyze the image in a "
                         "comprehensive and detailed manner."},
                        {"from": "gpt", "value": _long_caption(p, names[p.label])}]})
  _dump(os.path.join(folder, SHAREGPT4V_JSON), entries)


def _urban1k(folder: str, pairs, names) -> None:
  for i, p in enumerate(pairs, start=1):
    _save(os.path.join(folder, "image", f"{i}.jpg"), p.image)
    os.makedirs(os.path.join(folder, "caption"), exist_ok=True)
    with open(os.path.join(folder, "caption", f"{i}.txt"), "w", encoding="utf8") as f:
      f.write(_long_caption(p, names[p.label]).replace("\n", " ") + "\n")


def _negative(subset: str, caption: str, name: str, other: str) -> str:
  """A hard negative of `caption` in the style of each SugarCrepe subset."""
  adj, noun = name.split(" ", 1)
  o_adj, o_noun = other.split(" ", 1)
  if subset == "replace_obj":
    return caption.replace(name, f"{adj} {o_noun}")
  if subset == "replace_att":
    return caption.replace(name, f"{o_adj} {noun}")
  if subset == "replace_rel":
    return caption.replace(" in ", " under ").replace(" on ", " beside ") if (
        " in " in caption or " on " in caption) else caption + " upside down"
  if subset == "add_obj":
    return caption.rstrip(".!") + f" next to a {o_noun}."
  if subset == "add_att":
    return caption.replace(name, f"{o_adj} {name}")
  if subset == "swap_att":
    return caption.replace(name, f"{noun} {adj}")
  return caption.replace(name, f"{o_noun} and {noun}")  # swap_obj


def _sugarcrepe(folder: str, pairs, names) -> None:
  for i, p in enumerate(pairs):
    _save(os.path.join(folder, "val2017", f"{200 + i:012d}.jpg"), p.image)
  for subset in SUGARCREPE_SUBSETS:
    doc = {}
    for i, p in enumerate(pairs):
      other = names[(p.label + 1) % len(names)]
      doc[str(i)] = {"filename": f"{200 + i:012d}.jpg", "caption": p.caption,
                     "negative_caption": _negative(subset, p.caption, names[p.label], other)}
    _dump(os.path.join(folder, "data", f"{subset}.json"), doc)


def _mmeb_rows(subset: str, folder: str, pairs, names) -> list[dict]:
  img_dir = os.path.join(folder, "eval_images")
  rows = []
  n = len(pairs)
  for i, p in enumerate(pairs):
    rel = f"{subset}/{i}.jpg"
    others = [(i + k) % n for k in range(1, min(n, 8))]
    wrong = [c for c in range(len(names)) if c != p.label]
    if subset in ("ImageNet-1K", "OK-VQA"):
      _save(os.path.join(img_dir, rel), p.image)
      if subset == "ImageNet-1K":
        text = "<|image_1|>\nRepresent the given image for classification"
        targets = [names[p.label]] + [names[c] for c in wrong]
      else:
        text = ("<|image_1|>\nRepresent the given image with the following question: "
                "What animal is shown?")
        targets = [names[p.label].split(" ", 1)[1]] + sorted(
            {names[c].split(" ", 1)[1] for c in wrong} - {names[p.label].split(" ", 1)[1]})
      rows.append(dict(qry_text=text, qry_img_path=rel, tgt_text=targets,
                       tgt_img_path=[""] * len(targets)))
    elif subset == "MSCOCO_t2i":
      _save(os.path.join(img_dir, rel), p.image)
      cands = [rel] + [f"{subset}/{j}.jpg" for j in others]
      rows.append(dict(qry_text=f"Find me an everyday image that matches the given caption: "
                       f"{p.caption}", qry_img_path="",
                       tgt_text=["<|image_1|>\nRepresent the given image."] * len(cands),
                       tgt_img_path=cands))
    elif subset == "MSCOCO_i2t":
      _save(os.path.join(img_dir, rel), p.image)
      texts = [p.caption] + [pairs[j].caption for j in others]
      rows.append(dict(qry_text="<|image_1|>\nFind an image caption describing the given "
                       "everyday image.", qry_img_path=rel, tgt_text=texts,
                       tgt_img_path=[""] * len(texts)))
    else:  # MSCOCO: visual grounding, the candidates are crops
      _save(os.path.join(img_dir, rel), p.image)
      h, w = p.image.shape[:2]
      crop = f"{subset}/{i}_crop.jpg"
      _save(os.path.join(img_dir, crop), p.image[h // 4:3 * h // 4, w // 4:3 * w // 4])
      cands = [crop] + [f"{subset}/{j}_crop.jpg" for j in others]
      noun = names[p.label].split(" ", 1)[1]
      rows.append(dict(qry_text=f"<|image_1|>\nSelect the portion of the image that isolates "
                       f"the object labeled as \"{noun}\"", qry_img_path=rel,
                       tgt_text=["<|image_1|>\nRepresent the given cropped image of the "
                                 "object"] * len(cands), tgt_img_path=cands))
  return rows


def _mmeb(folder: str, pairs, names) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq

  schema = pa.schema([("qry_text", pa.string()), ("qry_img_path", pa.string()),
                      ("tgt_text", pa.list_(pa.string())),
                      ("tgt_img_path", pa.list_(pa.string()))])
  for subset in MMEB_SUBSETS:
    rows = _mmeb_rows(subset, folder, pairs, names)
    table = pa.Table.from_pylist(rows, schema=schema)
    out = os.path.join(folder, "MMEB-eval", subset, "test-00000-of-00001.parquet")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    pq.write_table(table, out)


def _classification(folder: str, pairs, names) -> None:
  entries = []
  for i, p in enumerate(pairs):
    rel = f"images/{names[p.label].replace(' ', '_')}/{i}.jpg"
    _save(os.path.join(folder, rel), p.image)
    entries.append({"file_path": rel, "label": names[p.label]})
  _dump(os.path.join(folder, "label_idx.json"), {str(c): n for c, n in enumerate(names)})
  _dump(os.path.join(folder, "dataset_list.json"), entries)


_WRITERS = {
    "flickr30k": lambda f, p, n: _karpathy(f, p, n, coco=False),
    "coco": lambda f, p, n: _karpathy(f, p, n, coco=True),
    "sharegpt4v": _sharegpt4v, "urban1k": _urban1k, "sugarcrepe": _sugarcrepe,
    "mmeb": _mmeb, "classification": _classification,
}


def _stamp(name: str, spec: demo_dataset.DemoSpec, count: int) -> dict:
  return {"name": name, "spec": dataclasses.asdict(spec), "count": count, "version": _VERSION}


def _is_complete(folder: str, stamp: dict) -> bool:
  try:
    with open(os.path.join(folder, STAMP)) as f:
      return json.load(f) == stamp
  except (OSError, ValueError):
    return False


def write(name: str, folder: str, spec: demo_dataset.DemoSpec | None = None, *,
          count: int = 24) -> str:
  """Writes (or reuses) the demo set of benchmark `name` at `folder`; returns `folder`."""
  if name not in _WRITERS:
    raise ValueError(f"No demo set for benchmark {name!r}; choose one of {', '.join(NAMES)}.")
  if count < 2:
    raise ValueError("A demo benchmark set needs count >= 2 pairs.")
  spec = spec or demo_dataset.DemoSpec()
  stamp = _stamp(name, spec, count)
  names = demo_dataset.class_names(spec)

  def build(tmp: str) -> None:
    _WRITERS[name](tmp, _pairs(spec, count), names)
    atomic_io.write_json(os.path.join(tmp, STAMP), stamp)

  return atomic_io.build_folder(folder, lambda f: _is_complete(f, stamp), build)
