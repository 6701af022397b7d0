"""Progress bars that stay out of the book: ``ntkrepro run`` sets ``$NTKREPRO_PROGRESS=0``
for its kernels (an executed page holds results, not widgets pulling scripts from a CDN);
interactive runs show the bars."""

from __future__ import annotations

import os

from tqdm.auto import tqdm as _tqdm


def enabled() -> bool:
    """False when ``$NTKREPRO_PROGRESS`` is ``0``."""
    return os.environ.get("NTKREPRO_PROGRESS", "1") != "0"


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm``, disabled unless :func:`enabled` (an explicit ``disable`` wins)."""
    kwargs.setdefault("disable", not enabled())
    return _tqdm(*args, **kwargs)
