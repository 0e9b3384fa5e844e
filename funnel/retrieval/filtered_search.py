"""FAISS search that applies the request's hard filters inside the search, for any index type.

An `IDSelectorBitmap` over catalog rows (the ids the shard's `IndexIDMap2` answers with) goes into
search parameters of the inner index's own type, so its settings (nprobe, efSearch, k_factor) hold.
`IndexIDMap2` translates only the top-level selector to its internal ids; a refining index
(`...,RFlat`) searches its base index with parameters of their own, so their selector is wrapped
in the same translation here, or the base would filter the wrong items.
"""

from __future__ import annotations

import faiss
import numpy as np

from funnel.retrieval.allowed import Allowed
from funnel.retrieval.hits import Hits


def _parameters(index: faiss.Index, selector: faiss.IDSelector, id_map: object, keep: list) -> faiss.SearchParameters:
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = inner.k_factor
        translated = faiss.IDSelectorTranslated(id_map, selector)
        keep.append(translated)
        base = _parameters(inner.base_index, translated, id_map, keep)
        keep.append(base)
        params.base_index_params = base
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = inner.hnsw.efSearch
    elif (ivf := faiss.try_extract_index_ivf(inner)) is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = ivf.nprobe
        params.max_codes = ivf.max_codes
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    return params


def filtered_search(index: faiss.IndexIDMap2, vector: np.ndarray, k: int, allowed: Allowed) -> Hits:
    """The best `k` items of `index` for `vector` [1, dim] among the `allowed` catalog rows."""
    if k <= 0 or index.ntotal == 0:
        return Hits(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    bitmap = allowed.bitmap()
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    keep: list = []  # SWIG holds raw pointers: these objects must outlive the search
    params = _parameters(index.index, selector, index.id_map, keep)
    scores, rows = index.search(np.ascontiguousarray(vector, dtype=np.float32), min(k, index.ntotal), params=params)
    found = rows[0] >= 0
    return Hits(rows[0][found], scores[0][found])
