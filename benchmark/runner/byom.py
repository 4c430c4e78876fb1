"""Bring your own model: ``benchmark.evaluate(model, suite=..., attacks=..., eps=...)``.

Any ``nn.Module`` that maps [0, 1] RGB images (B, 3, H, W) to ``{task: (B, C, H, W)}`` for the
suite's tasks is attacked with the suite's attacks on its data, exactly as the suite's members
are (the same cells, validator, isolation and scores), and the cells come back as a pandas
DataFrame. With ``results``, they are also written to that store (resumable; the leaderboard
shows the model as an external entry with its weights hash).

>>> import benchmark
>>> frame = benchmark.evaluate(my_model, suite="tiny-nyuv2-resnet34", attacks=["pgd:gb-mta"], eps=[8])
... # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from rich.console import Console

from benchmark.errors import UserError
from benchmark.progress import make_console
from benchmark.runner.run import RunOptions, run
from benchmark.runner.store import ResultsStore

__all__ = ["evaluate"]


def evaluate(model: torch.nn.Module | str | Path, suite: str = "tiny-nyuv2-resnet34", attacks: list[str] | None = None,
             eps: list[float] | None = None, *, profile: str = "quick", seeds: list[int] | None = None,
             results: str | Path | None = None, name: str | None = None, defenses: list[str] | None = None,
             device: str = "cpu", data_root: str | None = None, console: Console | None = None):
    """Attack ``model`` (an ``nn.Module``, or a Hub-format checkpoint directory) with the suite's
    profile (``attacks``, ``eps``, ``seeds`` and ``defenses`` override it) and return one row per
    cell (:meth:`ResultsStore.to_pandas` columns: ``model``, ``attack``, ``eps``, ``seed``,
    ``status``, ``arp``, ``arp_<task>``, clean and adversarial metrics, passes, time...)."""
    if isinstance(model, str | Path):
        module, model_dir = None, str(model)
    elif isinstance(model, torch.nn.Module):
        module, model_dir = model, None
    else:
        raise UserError(f"evaluate() takes an nn.Module or a checkpoint directory, not a {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="mtlbench-") as tmp:
        db = Path(results) if results is not None else Path(tmp) / "results.db"
        run_options = RunOptions(suite=suite, profile=profile, attacks=attacks, eps=eps, seeds=seeds, device=device,
                             results=str(db), data_root=data_root, defenses=defenses, model_dir=model_dir,
                             model_name=name)
        summary = run(run_options, console=console or make_console(stderr=True, quiet=True), module=module)
        with ResultsStore(db, readonly=True) as store:
            return store.to_pandas(keys=summary.keys)
