"""retformer_jax: retrieval-augmented multimodal recognition in JAX/Flax.

RetFormer (retrieval-augmented long-tail classification) and RetLLM (MLLM re-ranking for
image-text retrieval) share one pipeline, driven by `python -m retformer_jax.main`.
`from retformer_jax import Classifier` predicts single images with a trained workdir.
"""

__version__ = "0.1.0"

# Imported on first use: importing the package must stay cheap (no JAX) for its other users.
_LAZY = {"Classifier": "retformer_jax.classifier", "Prediction": "retformer_jax.classifier",
         "Neighbor": "retformer_jax.classifier"}


def __getattr__(name):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'retformer_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
