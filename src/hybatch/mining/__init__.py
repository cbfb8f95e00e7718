"""Hard negatives mined per language from parallel data (`mine_negatives.py`, docs/mining.md).

`pool`: the candidate passages of a language and what a question may never get as a negative;
`select`: the rank and score filters; `miner`: encoding, search and resumable per-language results;
`inputs`: what is read and written; `command`: the Hydra entry point.
"""
