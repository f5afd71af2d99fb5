"""The decoding engine: vanilla decoding (decoding.py), tree speculative decoding (speculative.py)
with its draft trees (tree.py), lossless acceptance and sampling (sampling.py), streaming.
"""
