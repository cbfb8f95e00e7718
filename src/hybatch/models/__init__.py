"""Encoders and tokenizers used by hybatch, and ways to get them without the Hugging Face hub."""
