"""One figure style for the whole book; figures are saved as PDF and PNG."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt

from ntkrepro.files import atomic_write

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable
    # Fixed metadata keeps PDF/PNG bytes identical across runs (no timestamps).
    "svg.hashsalt": "ntkrepro",
}
NETWORK = "#1f77b4"
LINEARIZED = "#ff7f0e"
NTK = "#d62728"
NNGP = "#2ca02c"
DIVERGED = "#7f7f7f"
#: A second network variant beside NETWORK (e.g. plain next to centered networks).
VARIANT = "#9467bd"


def use_style() -> None:
    """Apply the book's matplotlib style."""
    plt.rcParams.update(STYLE)


def subplots(ncols: int = 1, nrows: int = 1, width: float = 3.3, height: float = 2.6, **kw):
    """``plt.subplots`` with the book's style and a per-panel size in inches."""
    use_style()
    kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kw)


def log_ticks(ax, values, axis: str = "x") -> None:
    """Log scale with ticks labelled at ``values`` (plain numbers, no minor labels)."""
    from matplotlib.ticker import NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_ticks(list(values), [f"{v:g}" for v in values])
    target.set_minor_formatter(NullFormatter())


def shade(i: int, n: int, cmap: str = "Blues") -> tuple:
    """The i-th of n shades (light → dark), e.g. for increasing width."""
    return plt.get_cmap(cmap)(0.35 + 0.65 * (i + 1) / max(n, 1))


def mark_diverged(ax, x, y=None, *, label: str | None = "diverged") -> None:
    """Mark runs that diverged (NaN/inf loss) with a grey ✕, the book's one convention.

    A diverged run's numbers are recorded as NaN (``null`` in JSON) with the step in
    ``diverged_at`` (``train.TrainResult``); plotting NaN draws nothing, so the figure
    marks each one at its ``x``, at height ``y`` (e.g. the last finite value) or, where
    ``y`` is None or NaN, at the top edge of the axes. Nothing is drawn for an empty ``x``.
    """
    import numpy as np
    from matplotlib.transforms import blended_transform_factory

    xs = np.atleast_1d(np.asarray(x, float))
    if xs.size == 0:
        return
    ys = np.full(xs.shape, np.nan) if y is None else np.atleast_1d(np.asarray(y, float))
    ys = np.broadcast_to(ys, xs.shape)
    edge = ~np.isfinite(ys)
    style = {"marker": "x", "color": DIVERGED, "linestyle": "none", "markersize": 6, "zorder": 5}
    if (~edge).any():
        ax.plot(xs[~edge], ys[~edge], label=label, **style)
        label = None
    if edge.any():
        top = blended_transform_factory(ax.transData, ax.transAxes)
        y_top = np.full(edge.sum(), 0.97)
        ax.plot(xs[edge], y_top, transform=top, clip_on=False, label=label, **style)


def save(fig, folder: Path, name: str = "figure") -> list[Path]:
    """Write ``<name>.pdf`` and ``<name>.png`` atomically; returns their paths."""
    paths = []
    for ext, meta in (("pdf", {"CreationDate": None, "Producer": "ntkrepro"}), ("png", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, metadata=meta)
        path = Path(folder) / f"{name}.{ext}"
        atomic_write(path, buf.getvalue())
        paths.append(path)
    return paths
