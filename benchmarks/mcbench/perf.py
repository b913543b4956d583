"""`python -m mcbench.perf`: the performance measurement of `benchmarks/tools/perf.py`.

The measurement lives with the other benchmark tools of the checkout (it is not part of
an installed wheel); this entry point runs it from the checkout the package was
installed from (`pip install -e .`), with the same arguments.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "perf.py"


def main() -> int:
    if not TOOL.is_file():
        print(
            f"mcbench.perf: {TOOL} not found; it ships with the mcbench checkout "
            "(install with `pip install -e .` from it, or run benchmarks/tools/perf.py)"
        )
        return 2
    sys.path.insert(0, str(TOOL.parent))
    perf = importlib.import_module("perf")
    return perf.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
