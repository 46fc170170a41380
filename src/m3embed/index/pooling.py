"""Document-side ColBERT token pooling (Clavié et al. 2024, arXiv 2409.14683), applied at ingest.

Each document's n token vectors are clustered hierarchically (Ward linkage) into ceil(n / pool_factor)
clusters; the document keeps the normalised mean of each cluster. Queries are never pooled.
"""

from __future__ import annotations

import math

import numpy as np


def pool_tokens(vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """The pooled token vectors of one document: (n, h) -> (<= ceil(n / pool_factor), h) float32, rows in
    the order of their clusters' first token; the rows as given (any float dtype) when pool_factor is 1 or n < 2."""
    if pool_factor == 1 or len(vectors) < 2:
        return vectors
    from scipy.cluster.hierarchy import fcluster, linkage  # here: searching an index imports no scipy.cluster

    x = np.asarray(vectors, dtype=np.float32)
    labels = fcluster(linkage(x.astype(np.float64), method="ward"), t=math.ceil(len(x) / pool_factor),
                      criterion="maxclust")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    sums = np.zeros((len(first), x.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, x)
    sums = sums[np.argsort(first)]  # clusters in the order of their first token
    norms = np.linalg.norm(sums, axis=1, keepdims=True)  # a cluster's sum and mean normalise alike
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
