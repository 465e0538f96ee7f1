"""Data: synthetic biographies, prompts tables, and the activation store (HDF5)."""
