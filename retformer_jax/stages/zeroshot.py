"""Stage `zeroshot`: CLIP (or SigLIP) zero-shot classification with class-name prompts.

The paper's "CLIP zero-shot" baseline row: each test image goes to the class whose prompt
("a photo of a {name}.") has the most similar text embedding. With a SigLIP encoder the class
logits are exp(logit_scale) * cos + logit_bias, read through a sigmoid (`SigLIP.__call__`): a
monotone map of the cosine, so the ranking, and every metric here, is the cosine's. Image
vectors come from the split's embedding store (built here if the embed stage has not run yet,
and then reused by it), so no image is embedded twice. Writes WORKDIR/zeroshot/<split>/metrics.json.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from retformer_jax import atomic_io
from retformer_jax.data import registry
from retformer_jax.evaluation import metrics
from retformer_jax.kb import embed, encoder as encoder_lib, layout, sources, store
from retformer_jax.parallel import hosts
from retformer_jax.kb import source_spec

log = logging.getLogger(__name__)


def class_prompts(template: str, class_names) -> list[str]:
  if "{name}" not in template:
    raise ValueError(f"config.clip.prompt={template!r} has no '{{name}}' placeholder, e.g. "
                     "'a photo of a {name}.'")
  return [template.format(name=n.replace("_", " ")) for n in class_names]


def classify(image_nd: np.ndarray, prompts_cd: np.ndarray, k: int = 5,
             chunk: int = 4096) -> np.ndarray:
  """Top-k classes per image by cosine similarity (inputs L2-normalised), best first."""
  k = min(k, prompts_cd.shape[0])
  prompts_cd = np.asarray(prompts_cd, np.float32)
  out = []
  for i in range(0, image_nd.shape[0], chunk):
    sims = np.asarray(image_nd[i:i + chunk], np.float32) @ prompts_cd.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
    out.append(np.take_along_axis(top, order, 1))
  return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def run(config, workdir: str) -> None:
  data = registry.load(config.data)
  encoder_lib.ensure_demo_clip(config, workdir)
  hosts.barrier("zeroshot-demo-clip")
  encoder = encoder_lib.load_encoder(config, workdir)
  prompts = encoder.encode_texts(class_prompts(config.clip.prompt, data.class_names))
  for split in config.data.eval_splits:
    spec = source_spec.query_source(config, split)
    folder = layout.store_dir(workdir, spec.name)
    embed.embed_images(sources.open_source(spec, config), folder, encoder,
                       shard_size=config.embed.shard_size, num_workers=config.data.num_workers,
                       prefetch_batches=config.embed.prefetch_batches,
                       progress=config.embed.progress)
    hosts.barrier(f"zeroshot-{split}")
    emb = store.EmbeddingStore(folder)
    store.check_family(emb.encoder_family, encoder.family, f"store {folder}",
                       "the configured encoder (config.clip.path)",
                       f"delete {folder} to re-embed it, or use a new workdir.")
    store.check_compatible(emb.encoder, encoder.info, f"store {folder}", "the configured CLIP")
    top = classify(emb.image, prompts)
    report = metrics.accuracy_report(top, emb.labels, data.train_counts,
                                     many_above=config.eval.many_above,
                                     few_below=config.eval.few_below, with_top5=config.eval.top5)
    if jax.process_index() == 0:
      atomic_io.write_json(os.path.join(workdir, "zeroshot", split, "metrics.json"), report)
    title = f"{store.FAMILY_NAMES[encoder.family]} zero-shot, {config.data.name}:{split}"
    print(format_report(title, report), flush=True)


def format_report(title: str, report: dict) -> str:
  cell = lambda v: "  n/a" if v is None else f"{100 * v:5.1f}"  # noqa: E731
  keys = ["top1", "many", "medium", "few"] + (["top5"] if report.get("top5") is not None else [])
  head = " | ".join(f"{k:>6}" for k in keys)
  row = " | ".join(f"{cell(report[k]):>6}" for k in keys)
  return f"{title} ({report['num_examples']} examples)\n  {head}\n  {row}"
