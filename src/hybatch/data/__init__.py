"""Corpora, benchmark files and their sources."""
