"""mcbench: one protocol, one registry and one set of metrics for mode-collapse methods.

The harness lives here, grouped by concern: `mcbench.plugin` (what a method sees: the
Method base class, the Problem, the registry and the protocol), `mcbench.run` (the
training loop, suites and the results store) and `mcbench.report` (tables, figures,
documents). Methods, metrics and datasets are the sibling packages `mcbench.methods`,
`mcbench.metrics` and `mcbench.datasets`. ARCHITECTURE.md draws the path of one run.
"""

from mcbench.errors import McbenchError
from mcbench.plugin.method import Method, Problem, positive

__all__ = ["McbenchError", "Method", "Problem", "positive"]
__version__ = "0.1.0"
