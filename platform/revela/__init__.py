"""Revela: self-supervised dense-retriever training by in-batch next-token prediction, on Ray."""

__version__ = "0.1.0"
