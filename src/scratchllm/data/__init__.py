"""Corpora (text from a name or a path) and batches of token windows."""
