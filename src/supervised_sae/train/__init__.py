"""SAE training: the trainer, the run kinds' stages, and device placement."""
