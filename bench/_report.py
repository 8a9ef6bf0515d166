"""What the benchmark scripts share: a plain-text table and a results file with the machine's facts."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any


def print_table(header: list[str], table: list[list[str]]) -> None:
    """``table`` under ``header``, every column as wide as its widest cell."""
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))


def write_results(path: str | Path, rows: list[dict[str, Any]], **facts: Any) -> Path:
    """``rows`` as JSON with the machine, Python and ``facts`` (versions, settings); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "python": sys.version.split()[0], **facts,
                               "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return out
