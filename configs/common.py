"""Every key the pipeline reads, with its default. Data set configs start from `get_config()`.

No code reads a key that is not declared here, so `--config.x.y=...` with a typo, or with the
wrong type, fails at flag parsing instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections

# The paper's stages for RetFormer, in order.
RETFORMER_STAGES = ("zeroshot", "embed", "index", "neighbors", "train", "eval")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed: model init, data order, mixup, demo models
  c.stages = RETFORMER_STAGES  # stages run in order (python -m retformer_jax.main --help)

  # Device mesh. -1 = all remaining devices. Batches are sharded on `data`, weights on `model`.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis (batches)
  c.mesh.model = 1  # devices on the model axis (weights split by logical axes)
  # Logical axis name -> mesh axis (None = replicated). Used by nn.logical_to_mesh_sharding.
  c.mesh.axis_rules = (
      ("batch", "data"),
      ("embed", None),
      ("mlp", "model"),
      ("heads", "model"),
      ("kv_heads", "model"),
      ("head_dim", None),
      ("vocab", "model"),
      ("classes", None),
      ("layers", None),
      ("length", None),
      ("patch", None),
      ("channels", None),
      ("neighbors", None),
      ("kb", "data"),
  )

  # Frozen CLIP. path="" uses the embedded demo CLIP (tiny, random, built in the workdir).
  c.clip = ml_collections.ConfigDict()
  c.clip.path = ""  # a HF CLIP or SigLIP folder (chosen by config.json's model_type)
  c.clip.dtype = "float32"  # compute dtype: "bfloat16" on TPU/GPU
  c.clip.scan_layers = True  # one scanned layer stack (fast compile); False = unrolled
  c.clip.batch_size = 256  # per-process embedding batch (embed.batch_size=0 uses this)
  c.clip.prompt = "a photo of a {name}."  # class-name text for zero-shot and label KB entries
  c.clip.max_text_length = 77  # CLIP text tokens (Long-CLIP: 248); SigLIP uses its 64

  # The labelled data set (queries for train/eval).
  c.data = ml_collections.ConfigDict()
  # demo | cifar100_lt | imagenet_lt | places_lt | inat2018 | webvision | image_folder | tfds
  # (or a reader added with retformer_jax.data.registry.register)
  c.data.name = "demo"
  c.data.root = ""  # image_folder: DIR holding train/<class>/*, test/<class>/* [, val/]
  c.data.tfds_name = ""  # tfds: any prepared image-classification set, NAME[/CONFIG][:X.Y.Z]
  c.data.tfds_data_dir = ""  # "" = TFDS default (~/tensorflow_datasets)
  c.data.manual_dir = ""  # for data sets TFDS cannot download (ImageNet, WebVision)
  c.data.lt_splits_dir = ""  # OLTR split lists; "" = the Places-LT lists shipped with the package
  c.data.cache_dir = ""  # local; cached label scans + list matches; "" = ~/.cache/retformer_jax
  c.data.lt_imbalance = 100.0  # cifar100_lt: max / min class count of the generated subset
  c.data.train_split = "train"  # split trained on (image_folder: a folder; tfds: a TFDS split)
  c.data.eval_splits = ("test",)  # splits evaluated; the same kinds of names as train_split
  c.data.num_workers = 4  # decoding threads
  c.data.max_examples = 0  # per split; > 0 keeps that many, evenly spaced (smoke runs)
  # Generated demo set (used when data.name == "demo").
  c.data.demo = ml_collections.ConfigDict()
  c.data.demo.num_classes = 20  # classes of the generated demo set
  c.data.demo.max_per_class = 200  # training images of the largest class
  c.data.demo.imbalance = 50.0  # max/min class count
  c.data.demo.val_per_class = 10  # validation images per class
  c.data.demo.test_per_class = 30  # test images per class
  c.data.demo.image_size = 32  # side of the generated images, pixels
  c.data.demo.label_noise = 0.0  # fraction of training labels flipped
  c.data.demo.seed = 0  # seed of the generated images, captions and noise

  # Many / Medium / Few class buckets by training-set count: many > hi, few < lo.
  c.eval = ml_collections.ConfigDict()
  c.eval.many_above = 100  # Many: classes with more training images than this
  c.eval.few_below = 20  # Few: classes with fewer training images than this
  c.eval.batch_size = 512  # global eval batch
  c.eval.top5 = False  # also report top-5 accuracy
  c.eval.num_explained = 8  # predictions drawn in the explanation sheet

  # Knowledge base: a named list of sources (see retformer_jax/kb/source_spec.py). Entries:
  # "downstream" (the training split of config.data), "<dataset>:<split>",
  # "[name=]tfds:<name>[/<config>][:<version>]:<split>" (a prepared TFDS classification set),
  # "[name=]wds:<dir>" (webdataset / img2dataset tars), "[name=]clipret:<dir>" (clip-retrieval
  # embeddings).
  c.kb = ml_collections.ConfigDict()
  c.kb.name = "downstream"  # index / neighbours live under WORKDIR/{index,neighbors}/<name>
  c.kb.sources = ("downstream",)  # KB source entries (forms listed above)
  c.kb.precomputed_encoder = ""  # id (CLIP folder basename) that made clipret embeddings

  # Embedding stores (stage `embed`); the encoder is config.clip.
  c.embed = ml_collections.ConfigDict()
  c.embed.batch_size = 0  # per process (same batches on 1 or N hosts); 0 = clip.batch_size
  c.embed.shard_size = 4096  # source items per atomically written shard (the resume unit)
  c.embed.prefetch_batches = 4  # batches decoded ahead of the device by data.num_workers threads
  c.embed.progress = True  # tqdm bar (items/s, ETA) on stderr
  # wds items without a caption (no KEY.txt / KEY.json caption, or empty): "skip" = not
  # embedded, listed in the store manifest with reason missing_caption; "error" = stop.
  c.embed.missing_caption = "skip"

  # ANN index over the KB's image vectors (stage `index`); one segment per source.
  c.index = ml_collections.ConfigDict()
  c.index.backend = "faiss"  # faiss | scann | exact
  c.index.rerank_depth = 0  # >0: fetch this many candidates, re-score exactly from the store
  c.index.segment_size = 0  # >0: cut sources into segments of this many rows (built per host)
  c.index.faiss = ml_collections.ConfigDict()
  c.index.faiss.factory = ""  # any faiss index_factory string; "" = "HNSW{hnsw_m},Flat"
  c.index.faiss.hnsw_m = 32  # HNSW links per node
  c.index.faiss.ef_construction = 200  # HNSW build beam
  c.index.faiss.ef_search = 128  # HNSW search beam
  c.index.faiss.nprobe = 64  # IVF factories
  c.index.faiss.nlist_factor = 2.0  # "{nlist}" in factory = this x sqrt(segment rows)
  c.index.faiss.train_size = 262144  # vectors sampled to train IVF / PQ
  c.index.faiss.mmap = False  # memory-map the index file on load (IVF / flat codes)
  c.index.scann = ml_collections.ConfigDict()
  c.index.scann.num_leaves = 0  # 0 = about sqrt(N)
  c.index.scann.num_leaves_to_search = 0  # 0 = num_leaves / 10 (at least 1)
  c.index.scann.training_sample_size = 262144  # vectors sampled to train the tree / codes
  c.index.scann.dims_per_block = 2  # asymmetric hashing: 4-bit codes per 2 dims
  c.index.scann.anisotropic_threshold = 0.2  # anisotropic quantisation threshold
  c.index.scann.reorder_k = 256  # in-index exact re-scoring; 0 = none (use index.rerank_depth)
  c.index.exact = ml_collections.ConfigDict()
  c.index.exact.approx = False  # jax.lax.approx_max_k for the local top-k (TPU)
  c.index.exact.recall_target = 0.95  # approx_max_k only
  c.index.exact.query_batch = 1024  # queries per exact matmul

  # Neighbours per query split (stage `neighbors`): data.train_split, train.eval_split, then
  # data.eval_splits (each of these splits also gets a query store in stage `embed`).
  c.neighbors = ml_collections.ConfigDict()
  c.neighbors.k = 32  # neighbours per query (the model's k)
  c.neighbors.exclude_self = True  # drop the query's own entry when the KB holds its split
  c.neighbors.exclude_duplicates = True  # ...and entries with an identical image vector
  c.neighbors.extra_depth = 16  # search k + this, deeper again if the filter left < k
  c.neighbors.chunk_size = 16384  # queries per atomically written part (the resume unit)
  c.neighbors.splits = ()  # query splits to (re)compute; () = all of the above

  # RetFormer model (SPEC "RetFormer model"). k comes from config.neighbors.k.
  c.model = ml_collections.ConfigDict()
  c.model.width = 0  # fusion width; 0 = the CLIP embedding dim (no input projection)
  c.model.num_layers = 4  # L cross-fusion layers
  c.model.num_heads = 8  # attention heads of the cross-fusion layers
  c.model.mlp_ratio = 4  # fusion MLP width / model width
  c.model.backbone_hidden = 0  # hidden width of the MLP branch L_I; 0 = linear
  c.model.tau = 2.0  # f = (tau / 2) (L_I + L_R)
  c.model.use_retrieval = True  # False = MLP-only baseline
  c.model.modalities = "image_text"  # image_text | image | text
  c.model.dropout = 0.0  # dropout in the fusion layers
  c.model.dtype = "float32"  # compute dtype: "bfloat16" on TPU/GPU

  # RetFormer training (paper recipe).
  c.train = ml_collections.ConfigDict()
  c.train.epochs = 25  # passes over the training split
  c.train.batch_size = 256  # global
  c.train.lr = 5e-4  # AdamW peak learning rate (warmup, then cosine)
  c.train.weight_decay = 0.1  # AdamW decoupled weight decay
  c.train.warmup_epochs = 1.0  # linear warmup length
  c.train.grad_clip = 1.0  # global-norm clip; 0 = off
  c.train.loss = "ce"  # ce | lace
  c.train.lace_tau = 1.0  # LACE: logits + lace_tau * log(prior)
  c.train.label_smoothing = 0.1  # label smoothing of the targets
  c.train.mixup_alpha = 0.2  # 0 = off
  c.train.log_every = 50  # steps
  c.train.eval_every_epochs = 1  # val top-1 for the "best" checkpoint; 0 = off
  c.train.eval_split = ""  # e.g. "val" (must be in data.eval_splits): picks the best checkpoint
  # WORKDIR/checkpoints trained from other inputs (any model/train/data/KB key, or other
  # neighbours): "error" stops with the changed keys; "new_run" moves that run to
  # WORKDIR/runs/ and trains afresh. Same inputs always resume.
  c.train.changed_inputs = "error"

  # RetFormer checkpoints (orbax).
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500  # save every N steps (and on SIGTERM)
  c.checkpoint.keep_last = 2  # newest checkpoints kept
  c.checkpoint.keep_best = 1  # by val top-1
  c.checkpoint.async_save = True  # write checkpoints in the background
  c.checkpoint.step = -1  # eval: -1 = best if any, else latest

  # RetLLM: CLIP top-K candidates re-scored by Qwen2.5-VL (stage `retllm`).
  c.retllm = ml_collections.ConfigDict()
  c.retllm.model_path = ""  # HF Qwen2.5-VL / Qwen2-VL folder; "" = embedded tiny random model
  # flickr30k | coco | coco_tfds | demo | sharegpt4v | urban1k | sugarcrepe | mmeb |
  # classification; metrics in WORKDIR/retllm/<dataset>/metrics.json
  c.retllm.dataset = "flickr30k"
  # The data set's folder as its own instructions leave it (README: RetLLM benchmarks); with
  # karpathy_json set, the image folder; coco_tfds: the TFDS data_dir.
  c.retllm.data_dir = ""
  c.retllm.karpathy_json = ""  # dataset_flickr30k.json / dataset_coco.json ("" = in data_dir)
  c.retllm.demo_data = False  # data_dir "": write the dataset's demo set under WORKDIR first
  c.retllm.subsets = ""  # sugarcrepe / mmeb: comma-separated subsets ("" = all of them)
  c.retllm.sharegpt4v_count = 1000  # first N entries of the share-captioner json
  c.retllm.i2t_scoring = "pointwise"  # retrieval image->text: pointwise | listwise (pick index)
  c.retllm.choice_scoring = "both"  # sugarcrepe: pointwise | listwise | both
  c.retllm.listwise_answer = "greedy"  # listwise: greedy (the reference's answer) | argmax
  c.retllm.class_source = "list"  # classification: list (data_dir layout) | data (config.data)
  c.retllm.class_prompt = "clip"  # classification CLIP prompt: clip | reference | '...{name}...'
  c.retllm.split = "test"  # Karpathy / TFDS split holding the 1k (Flickr30k) or 5k (COCO) test
  c.retllm.captions_per_image = 5  # captions kept per gallery image
  c.retllm.top_k = 5  # CLIP candidates re-scored per query
  c.retllm.floor_decimals = 2  # P(True) floored to this many decimals (-1 = no flooring)
  c.retllm.injection = True  # visual re-injection into one FFN layer
  c.retllm.injection_alpha = 0.12  # weight of the injected visual memory in the armed FFN
  c.retllm.injection_tau = 0.75  # top-10 entropy / log 10 threshold that arms a layer
  c.retllm.injection_layer_lo = 5  # layers l with lo < l < hi are watched for the trigger
  c.retllm.injection_layer_hi = 16  # upper bound of the watched layers (see _lo)
  c.retllm.injection_memory = "all"  # all (input embeddings) | image (image tokens only)
  # Trigger logits = lm_head on the raw hidden state, as the released code computes them;
  # True = through the final RMSNorm first (the normed variant).
  c.retllm.injection_final_norm = False
  # Images first resized as qwen_vl_utils does (PIL bicubic to multiples of 28 within its
  # [4, 16384] * 28^2 pixel bounds), then by the HF processor, as the released code loads them;
  # False = the HF processor alone.
  c.retllm.pre_resize = True
  c.retllm.vision_cache_size = 0  # images whose vision features stay cached (0 = every image)
  c.retllm.prefix_cache_bytes = 4 << 30  # LRU of prompt-prefix K/V kept across chunks, per host
  c.retllm.batch_size = 8  # candidates per MLLM forward
  c.retllm.dtype = "bfloat16"  # MLLM compute dtype ("float32" on CPU)
  c.retllm.min_pixels = 256 * 28 * 28  # image pixel bounds of the Qwen processor (min)
  c.retllm.max_pixels = 512 * 28 * 28  # image pixel bounds of the Qwen processor (max)
  c.retllm.num_images = 0  # first N gallery images and their captions (0 = all; smoke runs)
  c.retllm.num_queries = 0  # first N queries per direction re-scored (0 = all; smoke runs)
  c.retllm.chunk_size = 64  # queries per resumable result file (pairs of a chunk share prefixes)

  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config so that it runs on a laptop CPU in minutes."""
  c.clip.batch_size = 64
  c.eval.batch_size = 64
  c.model.num_layers = 1
  c.model.num_heads = 2
  c.train.epochs = 2
  c.train.batch_size = 64
  c.train.log_every = 5
  c.checkpoint.every_steps = 20
  return c
