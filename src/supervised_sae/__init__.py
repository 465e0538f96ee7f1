"""Supervised sparse autoencoders for relation binding in biography QA."""

__version__ = "0.1.0"
