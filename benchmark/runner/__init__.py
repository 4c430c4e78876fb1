"""The runner: evaluation grid, SQLite results store with resume, executors (local, Ray)."""

from benchmark.runner.cells import Cell, evaluate_cell, expand_grid
from benchmark.runner.run import RunOptions, RunSummary, run
from benchmark.runner.store import CellResult, ResultsStore

__all__ = ["Cell", "CellResult", "ResultsStore", "RunOptions", "RunSummary", "evaluate_cell", "expand_grid", "run"]
