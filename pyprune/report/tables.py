"""Plain-text tables of a pruning report (what ``pyprune prune`` prints)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

__all__ = ["summary_table", "layers_table", "format_report", "text_table"]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; indices in ``right`` are right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r: List[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "-" * len(fmt(["-" * w for w in widths]))
    return "\n".join([fmt(cells[0]), rule] + [fmt(r) for r in cells[1:]])


def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def summary_table(report: Dict[str, Any]) -> str:
    """Accuracy, parameters, FLOPs and latency, dense vs pruned."""
    d, p = report["dense"], report["pruned"]
    rows = [
        ["test accuracy (%)", f"{d['accuracy']:.2f}", f"{p['accuracy']:.2f}",
         f"{p['accuracy'] - d['accuracy']:+.2f} pts"],
        ["parameters", _si(d["params"]), _si(p["params"]), f"{p['params'] / d['params']:.1%} kept"],
        ["FLOPs / image", _si(d["flops"]), _si(p["flops"]), f"{p['flops'] / d['flops']:.1%} kept"],
    ]
    for dev, per in report.get("latency", {}).items():
        for b, t in per.items():
            rows.append([f"latency {dev} batch {b} (ms)", f"{t['dense_ms']:.3f}", f"{t['pruned_ms']:.3f}",
                         f"{t['speedup']:.2f}x speedup"])
    return text_table(["", "dense", "pruned", "change"], rows, right=(1, 2, 3))


def layers_table(report: Dict[str, Any]) -> str:
    """Output channels per conv / linear layer, before and after."""
    rows = [[r["name"], r["type"], str(r["before"]), str(r["after"]),
             f"{r['after'] / r['before']:.0%}" if r["before"] else "-"] for r in report["layers"]]
    return text_table(["layer", "type", "channels before", "after", "kept"], rows, right=(2, 3, 4))


def format_report(report: Dict[str, Any]) -> str:
    """The whole printed summary: header line, before/after table, per-layer widths."""
    b = report.get("budget", {})
    head = (f"{report['model']} on {report['data']}, method {report['method']!r}, "
            f"{b.get('kind', '?')} target {b.get('target')}")
    p = report["pruned"]
    extra = (f"pruned accuracy before fine-tuning: {p['accuracy_before_finetune']:.2f}%"
             if "accuracy_before_finetune" in p else "")
    t = report.get("timing", {})
    timing = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f}s" for k, v in t.items() if k.endswith("_s"))
    parts = [head, "", summary_table(report)]
    if extra:
        parts.append(extra)
    parts += ["", layers_table(report)]
    if timing:
        parts += ["", f"time: {timing}"]
    return "\n".join(parts)
