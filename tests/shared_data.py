"""Where the workspace's shared data (`../shared/data`: traces, bandwidth log, reference CSV, Seldon CRD) is.

Tests may read it; the product never does. A clone may sit anywhere, so look beside the clone first, then at
`$IPA_SHARED_DATA`, then at the workspace's fixed place.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _find() -> Path:
    candidates = [ROOT.parent / "shared" / "data", Path("/work/shared/data")]
    if os.environ.get("IPA_SHARED_DATA"):
        candidates.insert(0, Path(os.environ["IPA_SHARED_DATA"]))
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


SHARED_DATA = _find()
