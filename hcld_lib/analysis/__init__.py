"""Measures on predictions, embeddings and runs: metrics, decoupling, clustering, statistics."""
