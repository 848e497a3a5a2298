"""PNG plots of a pruning report (matplotlib imported lazily, Agg backend)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["plot_channels", "plot_scores", "plot_history", "plot_all"]


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: str) -> str:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_channels(report: Mapping[str, Any], path: str) -> str:
    """Bars: output channels of every conv / linear layer before and after pruning."""
    plt = _plt()
    layers = report["layers"]
    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * n + 2), 4))
    xs = list(range(n))
    ax.bar([x - 0.2 for x in xs], [r["before"] for r in layers], width=0.4, label="dense", color="#9aa7b8")
    ax.bar([x + 0.2 for x in xs], [r["after"] for r in layers], width=0.4, label="pruned", color="#d1495b")
    ax.set_xticks(xs)
    ax.set_xticklabels([r["name"] for r in layers], rotation=75, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title(f"{report['model']}: channels per layer ({report['method']})")
    ax.legend()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_scores(report: Mapping[str, Any], scores: Mapping[str, Any],
                keep: Optional[Mapping[str, Mapping[int, Sequence[int]]]], path: str) -> str:
    """Per-layer distribution of the criterion's scores (dots; kept channels coloured)."""
    import numpy as np
    plt = _plt()
    names = [r["name"] for r in report["layers"] if r["name"] in scores]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4))
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        s = np.asarray(scores[name], dtype=np.float64).reshape(-1)
        kept = np.zeros(s.shape, bool)
        k = (keep or {}).get(f"{name}.weight", {})
        idx = k.get(0, k.get("0")) if isinstance(k, Mapping) else None
        if idx is None:
            kept[:] = True
        else:
            kept[np.asarray(list(idx), dtype=np.int64)] = True
        jitter = rng.uniform(-0.25, 0.25, s.shape)
        ax.scatter(i + jitter[kept], s[kept], s=5, color="#2e86ab", label="kept" if i == 0 else None)
        ax.scatter(i + jitter[~kept], s[~kept], s=5, color="#d1495b", label="removed" if i == 0 else None)
        ax.boxplot([s], positions=[i], widths=0.6, showfliers=False,
                   medianprops={"color": "black"}, boxprops={"color": "#555555"})
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, fontsize=7)
    ax.set_ylabel(f"{report['method']} score")
    ax.set_title(f"{report['method']} scores per layer (dense model)")
    if names:
        ax.legend(loc="best", fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_history(report: Mapping[str, Any], path: str) -> str:
    """Train / test accuracy and loss over the epochs of training and fine-tuning."""
    plt = _plt()
    dense: List[Mapping[str, Any]] = report["history"].get("dense", [])
    ft: List[Mapping[str, Any]] = report["history"].get("finetune", [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x_d = list(range(1, len(dense) + 1))
    x_f = [len(dense) + i for i in range(1, len(ft) + 1)]
    for ax, key, label in ((axes[0], "accuracy", "accuracy (%)"), (axes[1], "loss", "loss")):
        for recs, xs, phase in ((dense, x_d, "dense"), (ft, x_f, "fine-tune")):
            if not recs:
                continue
            ax.plot(xs, [r[f"train_{key}"] for r in recs], "-o", ms=3, label=f"{phase} train")
            ax.plot(xs, [r[f"test_{key}"] for r in recs], "-s", ms=3, label=f"{phase} test")
        if dense and ft:
            ax.axvline(len(dense) + 0.5, color="gray", ls="--", lw=1)
        ax.set_xlabel("epoch (training, then fine-tuning after pruning)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['model']} {report['method']}: training history")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_all(report: Mapping[str, Any], out: str, scores: Optional[Mapping[str, Any]] = None,
             keep: Optional[Mapping[str, Any]] = None) -> Dict[str, str]:
    """Write channels.png, scores.png (when scores are given) and history.png to ``out``."""
    files = {"plot_channels": os.path.basename(plot_channels(report, os.path.join(out, "channels.png")))}
    if scores:
        files["plot_scores"] = os.path.basename(plot_scores(report, scores, keep, os.path.join(out, "scores.png")))
    files["plot_history"] = os.path.basename(plot_history(report, os.path.join(out, "history.png")))
    return files
