"""Non-dominated filtering of points (all columns minimised), vectorised with numpy.

Used by the exact solver to keep only the partial pipelines that can still lead to an optimum, and by the
candidate tables to drop stage configurations that can never be chosen.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 256


def nondominated(keys: np.ndarray) -> np.ndarray:
    """Indices of the rows of `keys` (shape N×d) that no other row dominates; of equal rows one is kept.

    Row q dominates row p when q ≤ p in every column. After a lexicographic sort a dominating row always comes
    first, so each row is compared only with the rows before it (in blocks, to keep the work in numpy); a row
    dominated by a row that is itself dominated is dominated too, so comparing with every earlier row is right.
    """
    n, d = keys.shape
    if n <= 1:
        return np.arange(n)
    order = np.lexsort(keys.T[::-1])
    k = keys[order]
    if d == 1:
        return order[:1]
    if d == 2:
        # the second column must fall strictly below everything before it
        prev_min = np.minimum.accumulate(np.concatenate(([np.inf], k[:-1, 1])))
        return order[k[:, 1] < prev_min]
    cols = [np.ascontiguousarray(k[:, c]) for c in range(1, d)]  # the first column is sorted already
    kept_rows: list[np.ndarray] = []
    kept: list[np.ndarray] = [np.empty(0) for _ in cols]
    for start in range(0, n, _BLOCK):
        blk = [c[start : start + _BLOCK] for c in cols]
        m = len(blk[0])
        # dominated by an earlier row of the block (strictly lower triangle) ...
        within = np.tri(m, m, -1, dtype=bool)
        for b in blk:
            within &= b[None, :] <= b[:, None]
        dominated = within.any(axis=1)
        # ... or by a row kept from the earlier blocks
        if len(kept[0]):
            by_kept = np.ones((m, len(kept[0])), dtype=bool)
            for b, kc in zip(blk, kept, strict=True):
                by_kept &= kc[None, :] <= b[:, None]
            dominated |= by_kept.any(axis=1)
        survivors = np.nonzero(~dominated)[0]
        kept_rows.append(survivors + start)
        kept = [np.concatenate((kc, b[survivors])) for kc, b in zip(kept, blk, strict=True)]
    return order[np.concatenate(kept_rows)]
