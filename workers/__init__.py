"""The TimeSformer model, its checkpoint formats, and the inference worker."""
