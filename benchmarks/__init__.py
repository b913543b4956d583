"""mcbench: one protocol, one registry and one set of metrics for mode-collapse methods.

The harness lives here (protocol, runner, suites, CLI, reporter); methods, metrics and
datasets are the sibling packages `mcbench.methods`, `mcbench.metrics`, `mcbench.datasets`.
"""

from mcbench.errors import McbenchError
from mcbench.method import Method, Problem

__all__ = ["McbenchError", "Method", "Problem"]
__version__ = "0.1.0"
