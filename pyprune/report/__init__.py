"""Reports of a pruning run: ``report.json``, text tables, PNG plots.

matplotlib is imported only when a plot is drawn (Agg backend), so this package
imports without it.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Mapping, Optional

from .tables import format_report, layers_table, summary_table, text_table

__all__ = ["write_json", "write_all", "format_report", "summary_table", "layers_table", "text_table",
           "read_json"]


def _clean(obj: Any) -> Any:
    """JSON-safe copy: tensors to lists, tuples to lists, NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(report: Mapping[str, Any], path: str) -> str:
    """Write ``report`` as indented JSON, atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(report), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def write_all(report: Dict[str, Any], out: str, *, scores: Optional[Mapping[str, Any]] = None,
              keep: Optional[Mapping[str, Any]] = None, plots: bool = True) -> Dict[str, str]:
    """report.json, report.txt and (``plots``) the PNG plots in ``out``; returns
    ``{what: file name}`` (also recorded in ``report["files"]``)."""
    files: Dict[str, str] = {"report": "report.json", "table": "report.txt"}
    if plots:
        from .plots import plot_all
        files.update(plot_all(report, out, scores=scores, keep=keep))
    report.setdefault("files", {}).update(files)
    tmp = os.path.join(out, "report.txt.tmp")
    with open(tmp, "w") as f:
        f.write(format_report(report) + "\n")
    os.replace(tmp, os.path.join(out, "report.txt"))
    write_json(report, os.path.join(out, "report.json"))
    return files
