"""Small figure helpers shared by the chapters (matplotlib/seaborn only)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


def transition_heatmap(T, classes=None, ax=None, title: str = "T", fmt: str = ".2f",
                       vmax: float = 1.0):
    """Heatmap of a transition matrix, rows = true class, columns = noisy label."""
    T = np.asarray(T, dtype=float)
    ax = ax or plt.gca()
    labels = classes if classes is not None else list(range(len(T)))
    sns.heatmap(T, ax=ax, vmin=0, vmax=vmax, cmap="viridis", annot=len(T) <= 10, fmt=fmt,
                annot_kws={"size": 7}, xticklabels=labels, yticklabels=labels,
                cbar_kws={"label": "p(noisy label | true class)"})
    ax.set_xlabel("noisy label")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return ax


def mean_band(ax, df, x: str, y: str, hue: str, label_fmt: str = "{}", **kw):
    """Line = mean over seeds, band = ± one std, one line per ``hue`` value."""
    for key, g in df.groupby(hue, sort=False):
        s = g.groupby(x)[y].agg(["mean", "std"]).reset_index()
        line, = ax.plot(s[x], s["mean"], label=label_fmt.format(key), **kw)
        ax.fill_between(s[x], s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                        color=line.get_color(), alpha=0.2, linewidth=0)
    return ax


#: the memorisation picture of the ELR README: per epoch, the share of examples with a
#: right label predicted correctly (or not), and of examples with a wrong label predicted
#: as their true class, memorised (predicted as the wrong label) or as neither
MEMO_PARTS = {"clean labels": [("clean_correct", "predicted correctly", "C2"),
                               ("clean_wrong", "predicted wrongly", "C0")],
              "wrong labels": [("noisy_true", "predicted as the true class", "C2"),
                               ("noisy_memorized", "memorised (predicted as the wrong label)", "C3"),
                               ("noisy_other", "predicted as neither", "C0")]}


def memorisation_panels(curves, methods: dict, title: str = ""):
    """One row per method (``{column value of curves["method"]: row title}``), two panels:
    examples with clean labels, examples with wrong labels (:data:`MEMO_PARTS`); mean over
    seeds with a ± one std band. ``curves``: histories with a ``method`` and an ``epoch``
    column and the columns of :data:`MEMO_PARTS`."""
    fig, axes = plt.subplots(len(methods), 2, figsize=(11, 3.5 * len(methods)), sharex=True,
                             sharey=True, squeeze=False)
    for row, (m, name) in enumerate(methods.items()):
        d = curves[curves["method"] == m].groupby("epoch")
        for col, (part, series) in enumerate(MEMO_PARTS.items()):
            ax = axes[row, col]
            for key, label, color in series:
                mean, std = d[key].mean(), d[key].std().fillna(0)
                ax.plot(mean.index, mean, color=color, label=label)
                ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.2)
            ax.set(title=f"{name}: examples with {part}", ylim=(0, 100))
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch" if row == len(methods) - 1 else "")
            ax.set_ylabel("fraction of examples (%)" if col == 0 else "")
    for col in range(2):  # under the panels, where it covers no curve
        axes[-1, col].legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def method_bars(acc: dict, methods: list, names: dict, colors: dict | None = None,
                reference: str | None = None, title: str = ""):
    """One horizontal bar chart per setting: ``acc[setting][method] = {"mean", "std", "n"}``;
    ``reference`` (a method) is drawn as a dashed line; ``colors`` maps methods to colours."""
    settings = list(acc)
    fig, axes = plt.subplots(1, len(settings), figsize=(3.4 * len(settings), 4.8), squeeze=False)
    for ax, s in zip(axes[0], settings):
        means = [acc[s][m]["mean"] for m in methods]
        stds = [acc[s][m]["std"] if acc[s][m]["n"] > 1 else 0 for m in methods]
        ax.barh(range(len(methods)), means, xerr=stds, color=[(colors or {}).get(m, "C0") for m in methods])
        if reference is not None:
            ax.axvline(acc[s][reference]["mean"], color="k", ls="--", lw=1)
        ax.set_yticks(range(len(methods)), [names[m] for m in methods] if ax is axes[0, 0] else [])
        ax.set(xlabel="test accuracy (%)", title=s, xlim=(max(0, np.nanmin(means) - 5), np.nanmax(means) + 3))
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
