"""retformer_jax: retrieval-augmented multimodal recognition in JAX/Flax.

RetFormer (retrieval-augmented long-tail classification) and RetLLM (MLLM re-ranking for
image-text retrieval) share one pipeline, driven by `python -m retformer_jax.main`.
"""

__version__ = "0.1.0"
