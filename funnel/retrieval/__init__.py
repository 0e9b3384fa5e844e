"""Retrieval's candidate sources over one shard's items, its FAISS index and filtered search: shared by
the retrieval service and by training, which draws the ranker's impressions with the same sources."""
