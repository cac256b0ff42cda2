"""Corpus -> chunks -> groups -> Parquet shards -> Ray Data stream of training tensors."""
