"""Plain-text tables: the one formatter behind every table widthwise prints (plans, diagnoses, sweeps, benches)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None, *, indent: str = "",
                 align: str = "left", rule: bool = False) -> str:
    """Columns padded to their widest cell, two spaces apart, trailing blanks stripped.

    ``align`` is ``left`` or ``right`` (every column); ``rule`` puts a line of dashes under the header.

    >>> print(format_table([["a", 1], ["bb", 22]], header=["k", "v"]))
    k   v
    a   1
    bb  22
    """
    if align not in ("left", "right"):
        raise ValueError(f"align must be left or right, got {align!r}")
    cells = [[str(c) for c in row] for row in ([header] if header is not None else []) + list(rows)]
    if not cells:
        return ""
    ncols = max(len(r) for r in cells)
    cells = [r + [""] * (ncols - len(r)) for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(ncols)]
    pad = str.ljust if align == "left" else str.rjust
    lines = [(indent + "  ".join(pad(c, w) for c, w in zip(r, widths, strict=True))).rstrip() for r in cells]
    if rule and header is not None:
        lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
