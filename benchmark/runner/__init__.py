"""The runner: the evaluation grid of typed cells (``cells``), the clean context of a target
(``context``), the SQLite results store that resumes after a kill (``store``), the executors
(``executors``: in this process, a pool of worker processes, Ray), ``mtlbench run`` (``run``),
result bundles and their verification (``bundle``, ``verify``), the CI gate (``check``) and
models brought by users (``byom``)."""

from benchmark.runner.cells import Cell, evaluate_cell, expand_grid
from benchmark.runner.context import CellContext, prepare_context
from benchmark.runner.run import RunOptions, RunSummary, run
from benchmark.runner.store import CellResult, ResultsStore

__all__ = ["Cell", "CellContext", "CellResult", "ResultsStore", "RunOptions", "RunSummary", "evaluate_cell",
           "expand_grid", "prepare_context", "run"]
