"""The language model: families, loading and inference, training, extraction."""
