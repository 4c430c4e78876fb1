"""Plan, then do: a :class:`Request` (what to evaluate) becomes a :class:`Plan` (the builds that
must happen first and the cells) before anything runs.

:func:`make_plan` is pure: it reads the suite's manifest and looks at which weights are on this
machine, and loads no weight and trains nothing. Everything that cannot run is named in the plan
(a full suite's members without weights), not discovered by a worker. :func:`execute_builds` trains
a plan's builds (a tiny suite's members that are not shipped or built yet, and their training
defenses); the runner then runs the cells, whose targets only find and load their weights
(:func:`benchmark.targets.resolve` never trains).

``mtlbench run --plan`` prints a plan and runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmark.errors import UserError
from benchmark.runner.cells import Cell, expand_grid
from benchmark.suites import Profile, Suite, load_suite
from benchmark.targets import Target
from benchmark.zoo.hub import MissingWeightsError

__all__ = ["Build", "NoWeightsError", "Places", "Plan", "Request", "execute_builds", "make_plan"]


@dataclass
class Request:
    """What to evaluate: a suite's profile, narrowed or changed by the knobs a user gives (None:
    the profile's). Every command that runs cells takes one: run, check, submit, evaluate. A knob
    has one name from the CLI option (``--eot-samples``, ``--score-draws``) to the cell."""

    suite: str
    profile: str = "quick"
    attacks: list[str] | None = None
    eps: list[float] | None = None
    models: list[str] | None = None
    seeds: list[int] | None = None
    defenses: list[str] | None = None  # "none", inference-time and training defenses (None: the profile's)
    images: int | None = None  # evaluate the first N images of the split (None: the profile's eval_size)
    eot_samples: int | None = None  # EOT draws per call on randomised defenses (None: the profile's)
    score_draws: int | None = None  # draws a randomised defense is scored over (None: the profile's)
    model_dir: str | None = None  # an external Hub-format checkpoint directory, run instead of the members
    model_name: str | None = None  # its name in results (default: the directory's name)
    precision: str | None = None  # "bf16": the attacks' forward passes under bf16 autocast (None: float32)


@dataclass
class Places:
    """Where a request's weights and data are on this machine, and the device and time limit its
    cells run with: locations, not part of any result's identity."""

    weights_dir: str | None = None
    data_root: str | None = None
    device: str = "cpu"
    cell_timeout: float | None = None  # seconds (None: the profile's; 0: no limit)


@dataclass(frozen=True)
class Build:
    """A checkpoint a plan trains before its cells: a tiny suite's member, or (``defense``) the
    member under a training defense."""

    member: str
    defense: str | None = None

    def __str__(self) -> str:
        return self.member if self.defense is None else f"{self.member}+{self.defense}"


class NoWeightsError(MissingWeightsError):
    """No member of a full suite's request has weights on this machine."""

    def __init__(self, message: str, missing: dict[str, str], ways: str) -> None:
        super().__init__(message)
        self.missing, self.ways = missing, ways


@dataclass
class Plan:
    """What a request does here: ``builds`` first, then ``cells``. ``missing``: members of a full
    suite without weights (member -> why), whose ``left_out`` cells are not in ``cells``."""

    suite: Suite
    profile: Profile
    request: Request
    places: Places
    cells: list[Cell]
    builds: list[Build] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    left_out: int = 0

    @property
    def targets(self) -> list[Target]:
        return list(dict.fromkeys(c.target for c in self.cells))

    def summary(self) -> str:
        """The size of the plan in one line."""
        cells = self.cells
        if not cells:
            return f"{self.suite.name} [{self.profile.name}]: no cell"
        targets = len({c.target for c in cells})
        attacks = len({c.attack.name for c in cells})
        eps = len({c.eps for c in cells})
        seeds = len({c.seed for c in cells})
        images = sorted({c.images for c in cells if c.images}) or ["all"]
        return (f"{self.suite.name} [{self.profile.name}]: {len(cells)} cells ({targets} targets x {attacks} attacks "
                f"x {eps} eps x {seeds} seed{'s' if seeds > 1 else ''}, where each applies), "
                f"{'/'.join(map(str, images))} images each")

    def print(self, console: Console) -> None:
        """The plan as ``mtlbench run --plan`` shows it: what is built first, what cannot run, and
        the cells per target."""
        console.print(Text(self.summary()), soft_wrap=True)
        if self.builds:
            console.print(Text(f"built first ({len(self.builds)}): " + ", ".join(map(str, self.builds))),
                          soft_wrap=True)
        else:
            console.print("built first: nothing (every target's weights are on this machine)")
        if self.missing:
            console.print(Text(f"not run ({len(self.missing)} models without weights, {self.left_out} cells): "
                               + "; ".join(f"{m}: {why.split('; ')[0]}" for m, why in self.missing.items())),
                          soft_wrap=True)
        table = Table(title="cells per target")
        for col in ("target", "cells", "attacks", "eps", "seeds", "images"):
            table.add_column(col, overflow="fold")
        by: dict[Target, list[Cell]] = {}
        for c in self.cells:
            by.setdefault(c.target, []).append(c)
        for target, cells in by.items():
            table.add_row(target.name, str(len(cells)), ", ".join(dict.fromkeys(c.attack.name for c in cells)),
                          ", ".join(f"{e:g}" for e in dict.fromkeys(c.eps for c in cells)),
                          ", ".join(str(s) for s in dict.fromkeys(c.seed for c in cells)),
                          str(cells[0].images or "all"))
        console.print(table)


def make_plan(request: Request, places: Places | None = None, *, module: torch.nn.Module | None = None) -> Plan:
    """The plan of ``request`` on this machine (``module``: an ``nn.Module`` evaluated as the
    external model). Pure: no weight is loaded and nothing is trained; what cannot run is an error
    (nothing can) or named in the plan (some members)."""
    places = places or Places()
    suite = load_suite(request.suite)
    profile = suite.profile(request.profile)
    suite.check_data_root(places.data_root)
    external = module if module is not None else request.model_dir
    if request.models and external is not None:
        raise UserError("--models picks suite members; with --model DIR the external model is run instead")
    cells = expand_grid(suite, profile, attacks=request.attacks, eps=request.eps, models=request.models,
                        seeds=request.seeds, weights_dir=places.weights_dir, data_root=places.data_root,
                        cell_timeout=places.cell_timeout, defenses=request.defenses,
                        eot_samples=request.eot_samples, score_draws=request.score_draws, images=request.images,
                        external=external, external_name=request.model_name, device=places.device,
                        precision=request.precision)
    missing = _what_cannot_run(suite, cells, places, external is not None)
    runs = [(c.target.external or c.target.member not in missing) and c.source not in missing for c in cells]
    left_out = runs.count(False)
    cells = [c for c, ok in zip(cells, runs, strict=True) if ok]
    return Plan(suite, profile, request, places, cells, _builds(suite, cells), missing, left_out)


def _what_cannot_run(suite: Suite, cells: list[Cell], places: Places, external: bool) -> dict[str, str]:
    """A full suite's run needs the real data (an error naming the missing data root) and its
    members' weights (an error when none has any; else member -> why, for the plan to name)."""
    if external:
        return {}
    if places.data_root is not None and not Path(places.data_root).is_dir():
        raise UserError(f"--data-root {places.data_root}: no such directory (the real {suite.data_source} data set "
                        f"is read from it; its layout: docs/tutorials/full-suites.md, \"Running the full suites\")")
    if places.weights_dir is not None and not Path(places.weights_dir).is_dir():
        raise UserError(f"--weights-dir {places.weights_dir}: no such directory (it holds one checkpoint directory "
                        "per model: DIR/<model>/model.safetensors and config.json)")
    if suite.synthetic:
        return {}  # a tiny member that is not here is built first (a build of the plan)
    members = list(dict.fromkeys([*(c.target.member for c in cells if not c.target.external),
                                  *(c.source for c in cells if c.source)]))  # a transfer cell's source too
    missing = {m: suite.member(m).repo_id or "(no Hub repo)" for m in members
               if not Target.of(cells[0].target.suite, m, weights_dir=places.weights_dir).is_built()}
    ways = (f"get weights by one of: `mtlbench zoo train {suite.name} --data-root DIR` (train them, from the ImageNet "
            f"backbone), `mtlbench zoo import {suite.name} WEIGHTROOT` (convert the paper authors' checkpoints), or "
            "`--weights-dir DIR` with checkpoint directories DIR/<model>/")
    if places.data_root is None:
        weights = (f"; and {len(missing)} of its {len(members)} models have no weights here ({ways})" if missing
                   else "")
        raise UserError(f"{suite.name} runs on the real {suite.data_source} data: pass --data-root DIR (the "
                        f"directory format: docs/tutorials/full-suites.md, \"Running the full suites\"){weights}")
    if missing and len(missing) == len(members):
        raise NoWeightsError(f"no model of {suite.name} has weights on this machine ({len(missing)} models: "
                             f"{', '.join(missing)}); {ways}", missing, ways)
    return {m: f"no weights on this machine (Hub repo {repo}); {ways}" for m, repo in missing.items()}


def _builds(suite: Suite, cells: list[Cell]) -> list[Build]:
    """What a tiny suite trains before the cells: its members that are not here (those a training
    defense needs too), then the training defenses that are not."""
    if not suite.tiny:
        return []
    targets = list(dict.fromkeys(c.target for c in cells if not c.target.external))
    missing = [t for t in targets if not t.is_built()]
    members = list(dict.fromkeys(t.member for t in missing if not t.trained_defense))
    parents = [t.member for t in missing if t.trained_defense and not Target.of(t.suite, t.member).is_built()]
    members += [m for m in dict.fromkeys(parents) if m not in members]
    sources = {c.source for c in cells if c.source} - set(members)  # the members transfer cells craft on
    members += [m for m in sorted(sources) if not Target.of(targets[0].suite, m).is_built()]
    defended = list(dict.fromkeys((t.member, t.defense) for t in missing if t.trained_defense))
    return [Build(m) for m in members] + [Build(m, d) for m, d in defended]


def execute_builds(plan: Plan, *, threads: int | None = None, workers: int | None = None,
                   console: Console | None = None) -> None:
    """Train a plan's builds: in worker processes, each defense as soon as its member is built;
    with one worker, one build per suite and defense."""
    from benchmark.threads import choose_workers
    from benchmark.zoo.build import build_suite
    from benchmark.zoo.defend import defend_suite, defense_job

    if not plan.builds:
        return
    suite, places = plan.suite, plan.places
    members = [b.member for b in plan.builds if b.defense is None]
    defended = [(b.member, b.defense) for b in plan.builds if b.defense is not None]
    chosen = choose_workers(workers, small_model=suite.tiny, device=places.device)
    if chosen > 1 and len(members) + len(defended) > 1:
        # the defenses train in the build's worker processes, each once its member is built
        jobs = [defense_job(suite, suite.member(m), d, device=places.device, data_root=places.data_root,
                            weights_dir=places.weights_dir, after_build=m in members) for m, d in defended]
        build_suite(suite, members, device=places.device, data_root=places.data_root, console=console,
                    threads=threads, workers=chosen, then=jobs)
        return
    if members:
        build_suite(suite, members, device=places.device, data_root=places.data_root, console=console,
                    threads=threads)
    for defense in dict.fromkeys(d for _, d in defended):
        defend_suite(suite, defense, [m for m, d in defended if d == defense], device=places.device,
                     data_root=places.data_root, weights_dir=places.weights_dir, console=console, threads=threads)


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (``mtlbench run --plan --json``)."""
    return {"suite": plan.suite.name, "profile": plan.profile.name, "builds": [str(b) for b in plan.builds],
            "missing": dict(plan.missing), "left_out": plan.left_out,
            "cells": [{"target": c.target.name, "attack": c.attack.name, "eps": c.eps, "seed": c.seed,
                       "images": c.images} for c in plan.cells]}
