"""The decoding engine: vanilla decoding (decoding.py), tree speculative decoding (speculative.py)
with its draft trees (tree.py), the KV cache and its attention masks (kv_cache.py), lossless
acceptance and sampling (sampling.py), streaming.
"""
