"""Figures of the scaling report (matplotlib, Agg backend: no display needed)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from dlmjax.scaling import fit, isoflop  # noqa: E402


def _log_axes(ax) -> None:
    """Log-log axes with plain tick labels and no crowded minor labels."""
    ax.set(xscale="log", yscale="log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_isoflop(path: str, compute, x, loss, vertices: isoflop.Vertices, *, title: str,
                 xlabel: str = "training tokens D") -> str:
    """Loss against x for every budget, its fitted parabola and the vertex."""
    compute, x, loss = (np.asarray(v, np.float64) for v in (compute, x, loss))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(vertices.compute)))
    for k, (c, color) in enumerate(zip(vertices.compute, colors)):
        sel = compute == c
        ax.scatter(x[sel], loss[sel], color=color, s=18, label=f"C = {c:.2g}")
        lo, hi = vertices.x_range[k]
        grid_x = np.exp(np.linspace(np.log(lo), np.log(hi), 100))
        ax.plot(grid_x, vertices.curve(k, grid_x), color=color, lw=1)
        if vertices.interior[k]:
            ax.scatter([vertices.x_opt[k]], [vertices.loss_opt[k]], color=color, marker="*",
                       s=120, edgecolor="black", zorder=3)
    _log_axes(ax)
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set(xlabel=xlabel, ylabel="ELBO (nats/token)", title=title)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_frontier(path: str, frontier: dict, *, published: dict | None = None) -> str:
    """M*(C) and D*(C) per noise type: vertices, fitted law and its 95% bootstrap band.

    frontier: noise -> {"compute": (K,), "M": (K,), "D": (K,), "M_law": PowerLawFit,
    "D_law": PowerLawFit}; published: noise -> {"M": PowerLaw, "D": PowerLaw} (dashed lines).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    colors = plt.cm.tab10(np.arange(10))
    for (noise, data), color in zip(sorted(frontier.items()), colors):
        c = np.asarray(data["compute"], np.float64)
        c_grid = np.exp(np.linspace(np.log(c.min()) - 0.5, np.log(c.max()) + 0.5, 100))
        for ax, key in zip(axes, ("M", "D")):
            law: fit.PowerLawFit = data[f"{key}_law"]
            lo, hi = law.band(c_grid)
            ax.fill_between(c_grid, lo, hi, color=color, alpha=0.2)
            ax.plot(c_grid, law(c_grid), color=color,
                    label=f"{noise}: {law.A:.3g}·C^{law.alpha:.3f}")
            ax.scatter(c, data[key], color=color, s=16)
            if published and noise in published:
                ax.plot(c_grid, published[noise][key](c_grid), color=color, ls="--", lw=0.8)
    axes[0].set(ylabel="M* (FLOPs/token)")
    axes[1].set(ylabel="D* (tokens)")
    for ax in axes:
        _log_axes(ax)
        ax.set(xlabel="compute C (FLOPs)" + (" — dashed: published" if published else ""))
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_power_law(path: str, x, y, law: fit.PowerLawFit, *, xlabel: str, ylabel: str,
                   title: str, groups=None, published=None) -> str:
    """Vertices (coloured by group), the fitted law with its band, the published law dashed."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    groups = np.asarray(groups) if groups is not None else np.full(x.shape, "")
    for g in np.unique(groups):
        sel = groups == g
        ax.scatter(x[sel], y[sel], s=16, label=str(g) or None)
    x_grid = np.exp(np.linspace(np.log(x.min()) - 0.3, np.log(x.max()) + 0.3, 100))
    lo, hi = law.band(x_grid)
    ax.fill_between(x_grid, lo, hi, color="gray", alpha=0.25)
    ax.plot(x_grid, law(x_grid), color="black",
            label=f"fit: {law.A:.3g}·x^{law.alpha:.3f} [{law.alpha_ci[0]:.3f}, "
                  f"{law.alpha_ci[1]:.3f}]")
    if published is not None:
        ax.plot(x_grid, published(x_grid), color="black", ls="--", lw=0.8,
                label=f"published: {published.A:.3g}·x^{published.alpha:.4g}")
    _log_axes(ax)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=6)
    return _save(fig, path)
