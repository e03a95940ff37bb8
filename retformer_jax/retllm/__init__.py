"""RetLLM: training-free image-text retrieval (CLIP candidates re-scored by a multimodal LLM)."""
