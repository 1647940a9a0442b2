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
