"""The runner: evaluation grid of typed cells, SQLite results store with resume, executors (local, Ray)."""

from benchmark.runner.cells import Cell, evaluate_cell, expand_grid
from benchmark.runner.context import CellContext, prepare_context
from benchmark.runner.run import RunOptions, RunSummary, run
from benchmark.runner.store import CellResult, ResultsStore

__all__ = ["Cell", "CellContext", "CellResult", "ResultsStore", "RunOptions", "RunSummary", "evaluate_cell",
           "expand_grid", "prepare_context", "run"]
