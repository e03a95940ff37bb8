"""Stage `retllm`: CLIP candidates re-ranked by Qwen2.5-VL, on every RetLLM benchmark family.

config.retllm.dataset picks the benchmark (retllm/benchmark_data.py reads it from
config.retllm.data_dir); the metrics go to WORKDIR/retllm/<dataset>/metrics.json:
  flickr30k coco coco_tfds demo sharegpt4v urban1k   t2i_r1 ... i2t_r10 and their clip_ twins
  sugarcrepe                                          acc_<subset>, acc_mean (+ clip_, pointwise_,
                                                      listwise_)
  mmeb                                                hit1_<subset>, hit1_<meta task>, hit1_mean
                                                      (+ clip_)
  classification                                      top1 [many medium few] (+ clip_)
Scores are kept per chunk of queries under WORKDIR/retllm/<dataset>/scores/, so a rerun
resumes and a finished run is not recomputed. In a multi-process job each process scores its
own chunks on its own devices (mesh from config.mesh over jax.local_devices()); process 0
writes the metrics. With config.clip.path == "" / config.retllm.model_path == "" the embedded
tiny random models are built in WORKDIR/demo_clip / WORKDIR/demo_qwen.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import ml_collections

from retformer_jax.demo import dataset as demo_dataset
from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.kb import encoder as encoder_lib
from retformer_jax.parallel import hosts
from retformer_jax.models import qwen_injection
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.retllm import benchmark_data
from retformer_jax.retllm import choice_eval
from retformer_jax.retllm import classify_eval
from retformer_jax.retllm import coarse
from retformer_jax.retllm import mmeb_eval
from retformer_jax.retllm import pipeline
from retformer_jax.retllm import scorer


def qwen_folder(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The MLLM folder: config.retllm.model_path, or the tiny random model built in the workdir."""
  rc = config.retllm
  if rc.model_path:
    path = os.path.expanduser(rc.model_path)
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"config.retllm.model_path {rc.model_path!r} is not a folder; give a HuggingFace "
          "Qwen2.5-VL / Qwen2-VL folder (config.json + *.safetensors + tokenizer files), "
          "or '' for the embedded tiny demo model.")
    return path
  folder = os.path.join(workdir, "demo_qwen")
  spec = demo_dataset.DemoSpec.from_config(config.data.demo)
  demo_qwen.build_demo_qwen(folder, demo_dataset.corpus(spec), min_pixels=rc.min_pixels,
                            max_pixels=rc.max_pixels, seed=config.seed)
  return folder


def injection_config(rc: ml_collections.ConfigDict):
  """The scorer's re-injection settings from config.retllm (None when switched off)."""
  if not rc.injection:
    return None
  return qwen_injection.InjectionConfig(
      enabled=True, alpha=rc.injection_alpha, tau=rc.injection_tau,
      layer_lo=rc.injection_layer_lo, layer_hi=rc.injection_layer_hi,
      memory=rc.injection_memory, final_norm=rc.injection_final_norm)


def scorer_kwargs(rc: ml_collections.ConfigDict) -> dict:
  return dict(floor_decimals=None if rc.floor_decimals < 0 else rc.floor_decimals,
              injection=injection_config(rc), batch_size=rc.batch_size, dtype=rc.dtype,
              min_pixels=rc.min_pixels, max_pixels=rc.max_pixels, pre_resize=rc.pre_resize,
              vision_cache_size=rc.vision_cache_size,
              prefix_cache_bytes=rc.prefix_cache_bytes)


# Settings that change how fast the scores come, not the scores: left out of the chunks' key.
SPEED_ONLY = ("batch_size", "vision_cache_size", "prefix_cache_bytes")


def out_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """WORKDIR/retllm/<dataset>: metrics.json, scores/, clip/."""
  return os.path.join(workdir, "retllm", config.retllm.dataset)


def make_chooser(rc: ml_collections.ConfigDict, template: str):
  """pair scorer -> ListwiseScorer with `template` ("retrieval" | "compare")."""
  # Imported on use: only listwise runs need it.
  from retformer_jax.retllm import listwise

  return lambda pair: listwise.ListwiseScorer(pair, template=template,
                                              answer=rc.listwise_answer)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  rc = config.retllm
  fam = benchmark_data.family(rc.dataset)
  folder = None
  if jax.process_index() == 0:  # a demo set (retllm.demo_data) written once
    folder = benchmark_data.data_dir(config, workdir)
  hosts.barrier("retllm-demo-data")
  folder = folder or benchmark_data.data_dir(config, workdir)
  data = benchmark_data.load(config, folder)
  logging.info("retllm: %s (%s), K=%d", rc.dataset, fam, rc.top_k)
  encoder_lib.ensure_demo_clip(config, workdir)  # when config.clip.path is ""
  hosts.barrier("retllm-demo-clip")
  encoder = coarse.ClipEncoder(encoder_lib.load_encoder(config, workdir), config.clip.dtype)
  if jax.process_index() == 0:  # the demo MLLM (when model_path is "") built once
    qwen_folder(config, workdir)
  hosts.barrier("retllm-demo-qwen")
  model_path = qwen_folder(config, workdir)
  kwargs = scorer_kwargs(rc)

  def make_scorer():
    # This process's own devices: pairs split over `data`, weights over `model` (a 7B model
    # on several chips); other processes score other chunks.
    mesh = mesh_lib.make_mesh(config.mesh, jax.local_devices())
    return scorer.PairScorer.from_folder(model_path, mesh=mesh,
                                         axis_rules=mesh_lib.axis_rules(config.mesh), **kwargs)

  settings = pipeline.Settings(
      top_k=rc.top_k, chunk_size=rc.chunk_size, num_queries=rc.num_queries,
      i2t_scoring=rc.i2t_scoring,
      scorer_identity=pipeline.scorer_identity(
          [os.path.abspath(model_path), coarse.folder_stamp(model_path), sorted(
              (k, repr(v)) for k, v in kwargs.items()
              if k not in SPEED_ONLY)] + (
                  [rc.listwise_answer] if rc.i2t_scoring == "listwise" or fam == "choice"
                  else [])))
  out = out_dir(config, workdir)
  common = dict(embed_batch_size=config.clip.batch_size)
  if fam == "retrieval":
    metrics = pipeline.run(data, encoder, make_scorer, out, settings,
                           make_chooser=make_chooser(rc, "retrieval"), **common)
    table = pipeline.format_table
  elif fam == "choice":
    metrics = choice_eval.run(data, encoder, make_scorer, make_chooser(rc, "compare"), out,
                              settings, scoring=rc.choice_scoring, **common)
    table = choice_eval.format_table
  elif fam == "mmeb":
    metrics = mmeb_eval.run(data, encoder, make_scorer, out, settings, **common)
    table = mmeb_eval.format_table
  else:
    metrics = classify_eval.run(data, encoder, make_scorer, out, settings, **common)
    table = classify_eval.format_table
  if metrics is None:
    logging.info("retllm: this process's chunks are scored; process 0 writes the metrics.")
  else:
    measure = {"retrieval": "Recall@k", "choice": "accuracy", "mmeb": "hit@1",
               "classify": "top-1"}[fam]
    logging.info("retllm %s (%%), %s -> %s:\n%s", measure, rc.dataset,
                 os.path.join(out, "metrics.json"), table(metrics))
