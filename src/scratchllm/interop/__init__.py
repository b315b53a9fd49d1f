"""Interoperability with Hugging Face `transformers` folders: config and state-dict maps, both ways."""
