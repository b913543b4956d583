"""Options of `mcbench report`, apart from the builder: the CLI builds its parser from
this light module without importing matplotlib, which only the report itself needs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

ERROR_MODES = ("std", "sem", "both")
# Samples per generator for the density figure: 50k takes ~0.2 s of CPU per method.
DENSITY_SAMPLES = 50_000


@dataclass
class Options:
    out: Path
    error: str = "both"
    density_samples: int = DENSITY_SAMPLES
    figures: bool = True
    pdf: bool = True
    published: bool = True
    unroll_study: Path | None = None
    device: str = "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mcbench report` (mcbench.report.build.run carries the command out)."""
    parser.add_argument(
        "results_dir",
        nargs="+",
        help="results folders (results.csv and/or runs/), run folders, or folders of them",
    )
    parser.add_argument("--out", "-o", help="output folder (default: FIRST_RESULTS_DIR/report)")
    parser.add_argument(
        "--error",
        choices=ERROR_MODES,
        default="both",
        help="spread shown after the mean: std, standard error, or both (default)",
    )
    parser.add_argument(
        "--density-samples",
        type=int,
        default=DENSITY_SAMPLES,
        help="samples per saved generator for the density plots (default 50000; 0: none)",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only (fast)")
    parser.add_argument("--no-pdf", action="store_true", help="PNG figures only")
    parser.add_argument("--no-published", action="store_true", help="leave out published numbers")
    parser.add_argument(
        "--unroll-study",
        help="folder or CSV of the unroll-depth study (default: a folder unroll* or "
        "depth*study* in or beside RESULTS_DIR)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for sampling generators")
    parser.add_argument(
        "--print",
        dest="show",
        choices=("final", "published", "all", "none"),
        default="final",
        help="tables printed on stdout: final metrics (default), ours beside published, "
        "all tables, or none",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="same as --print none")
