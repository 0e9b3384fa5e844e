"""Retrieval: user embedding -> FAISS search over one shard of the catalog, plus popular items."""
