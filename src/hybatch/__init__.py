"""Hybrid batch training for multilingual dense retrieval (Elmahdy, Lin, Ahmad 2024)."""

__version__ = "0.1.0"
