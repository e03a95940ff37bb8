"""Reading prepared TFDS data without TensorFlow: scan rate and example read + decode rate.

    python bench/data_read.py --records=20000 --threads=1,2

Writes a Places365-like prepared split (256x256 JPEGs of about 21 KB, label, file name; the
array_record layout `tfds build` produces) in a temp dir, then measures with the readers of
retformer_jax/data/tfds_source.py:
  scan      records/s of a whole-split field scan (labels + file names; what the first load of
            Places-LT, ImageNet-LT, iNat, WebVision does once, then caches)
  examples  examples/s of TfdsSplit[i] (record read + PIL JPEG decode to uint8 HWC), from N
            threads as the embed stage's decoding workers read
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retformer_jax.data import tfds_source  # noqa: E402


def _jpeg(seed: int) -> bytes:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:256, 0:256] / 256
  img = np.stack([np.sin(xx * rng.uniform(3, 20)), np.cos(yy * rng.uniform(3, 20)), xx * yy], -1)
  img = img * 120 + 128 + rng.normal(0, 8, (256, 256, 3))
  out = io.BytesIO()
  Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
  return out.getvalue()


def _write(data_dir: str, n: int) -> None:
  images = [_jpeg(i) for i in range(64)]

  class BenchPlaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(num_classes=365),
          "filename": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(n):
        yield i, {"image": images[i % 64], "label": i % 365,
                  "filename": f"data_256/a/airfield/{i:08d}.jpg"}

  BenchPlaces(data_dir=data_dir, file_format="array_record").download_and_prepare()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--records", type=int, default=20000)
  parser.add_argument("--examples", type=int, default=2000, help="examples decoded per setting")
  parser.add_argument("--threads", default="1,2")
  args = parser.parse_args()
  threads = [int(t) for t in args.threads.split(",")]
  tmp = tempfile.mkdtemp(prefix="bench_data_read_")
  try:
    _write(tmp, args.records)
    dataset = tfds_source.open_prepared("bench_places", tmp, "")
    result = {"records": args.records}
    rows = []
    for t in threads:
      dataset._sources.clear()  # cold source per setting
      start = time.perf_counter()
      dataset.scan("train", ["filename", "label"], t)
      rate = args.records / (time.perf_counter() - start)
      result[f"scan_records_s_{t}"] = round(rate)
      rows.append(("scan", t, rate))
    split = tfds_source.TfdsSplit(dataset, "train", labels=np.zeros(args.records, np.int64))
    count = min(args.examples, args.records)
    for t in threads:
      start = time.perf_counter()
      with concurrent.futures.ThreadPoolExecutor(t) as pool:
        shapes = set(pool.map(lambda i: split[i]["image"].shape, range(count)))
      rate = count / (time.perf_counter() - start)
      assert shapes == {(256, 256, 3)}
      result[f"examples_s_{t}"] = round(rate)
      rows.append(("examples", t, rate))
    print(f"{'what':<10}{'threads':>8}{'per s':>10}")
    for what, t, rate in rows:
      print(f"{what:<10}{t:>8}{rate:>10.0f}")
    print(json.dumps(result))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
