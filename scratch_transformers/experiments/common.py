"""What every experiment shares: its result record, figure saving and markdown tables."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

SIZES = ("quick", "full")


@dataclass
class ExperimentResult:
    """What an experiment measured: a markdown summary (with its table), the figures it wrote,
    and the headline numbers as floats (so tests and the tour's summary table can read them)."""

    name: str
    title: str
    summary: str
    figures: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def savefig(fig, out_dir, filename: str) -> Path:
    """Save a matplotlib figure atomically (temp file + os.replace) and close it."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path


def _cell(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table; floats printed with 4 significant digits."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
