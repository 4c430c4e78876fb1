"""Multi-task attack objectives: what direction an optimizer follows, and what it maximises.

An objective turns the per-sample, per-task losses ``L`` (B, T) of a model into

* an ascent direction (B, C, H, W) w.r.t. the input, and
* a per-sample score (B,) that iterative optimizers (APGD) use to keep their best point.

The optimizer never knows which objective it follows; the objective never knows the optimizer.

==============  ===========================================  ==========================================
objective       direction                                    score
==============  ===========================================  ==========================================
single-X        grad L_X                                     L_X
total           grad sum_i L_i                               sum_i L_i
signtotal       sum_i sign(grad L_i)                         sum_i (L_i - l_i) / l_i
gb-mta          sum_i grad L_i / L_i  (= grad sum_i log L_i)  sum_i (L_i - l_i) / l_i  (paper Alg. 3)
==============  ===========================================  ==========================================

``l_i`` is the clean loss of task i. GB-MTA needs one backward pass (of ``sum log L_i``);
SIGNTOTAL needs the T per-task gradients, taken from one forward pass.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch

from benchmark.errors import UserError
from benchmark.registry import Registry
from benchmark.tasks import Task

__all__ = [
    "OBJECTIVES",
    "SINGLE",
    "TASK_SHORT_NAMES",
    "Objective",
    "SingleX",
    "create_objective",
    "find_task",
    "list_objectives",
    "parse_single",
    "register_objective",
    "relative_score",
    "single_name",
]

#: the prefix of the single-task objectives' names (``single-X``)
SINGLE = "single-"
#: short names of the tasks in ``single-X`` objectives
TASK_SHORT_NAMES = {"segment_semantic": "segment", "normal": "normal", "depth_zbuffer": "depth",
                    "keypoints2d": "keypoint", "edge_texture": "edge"}
_LOG_FLOOR = 1e-12


def per_task_losses(model: torch.nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor],
                    tasks: list[Task]) -> torch.Tensor:
    """(B, T) per-sample losses of every task, with the graph to ``x``."""
    return output_losses(model(x), targets, tasks)


def output_losses(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                  tasks: list[Task]) -> torch.Tensor:
    """(B, T) per-sample losses of every task of the model outputs ``outputs``."""
    return torch.stack([t.loss(outputs[t.name], targets) for t in tasks], 1)


def relative_score(losses: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The paper's multi-task score sum_i (L_i - l_i) / l_i per sample."""
    return ((losses - clean) / clean.clamp_min(_LOG_FLOOR)).sum(1)


class Objective(ABC):
    """A multi-task attack objective over ``tasks`` (in the model's task order)."""

    name: str = ""
    #: the authors' batch loss for TOTAL and SINGLE-X: each task's loss is the mean over every valid
    #: pixel of the batch (set by an optimizer's ``loss="batch"``); per image otherwise
    batch_loss: bool = False
    #: the tasks whose summed loss the objective ascends (TOTAL: all, SINGLE-X: one); None for
    #: objectives that combine the tasks otherwise (GB-MTA, SIGNTOTAL), which ignore ``batch_loss``
    loss_tasks: list[int] | None = None

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = list(tasks)

    def losses(self, model, x, targets) -> torch.Tensor:
        return per_task_losses(model, x, targets, self.tasks)

    @abstractmethod
    def direction(self, model, x, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascent direction (B, C, H, W) at ``x`` and the detached per-task losses (B, T)."""

    def score(self, losses: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Per-sample value to maximise, from losses (B, T) and clean losses (B, T)."""
        return relative_score(losses, clean)

    def task_gradients(self, model, x, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's per-task gradient terms (K, B, C, H, W) from one forward pass, for
        multi-model optimizers such as Auto-SAGA that weight each task as one model; and the
        detached losses (B, T). By default the raw task gradients (of the batch losses with
        ``batch_loss``)."""
        if self.batch_loss:
            return self._batch_task_gradients(model, x, targets, list(range(len(self.tasks))))
        losses = self.losses(model, x, targets)
        return self._split_grads(losses, x), losses.detach()

    def _batch_task_gradients(self, model, x, targets, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = model(x)
        batch = [self.tasks[i].loss(outputs[self.tasks[i].name], targets, "mean") for i in indices]
        grads = torch.stack([self._grad(v, x, retain=j < len(batch) - 1) for j, v in enumerate(batch)])
        return grads, output_losses(outputs, targets, self.tasks).detach()

    def _split_grads(self, losses: torch.Tensor, x: torch.Tensor, indices: list[int] | None = None) -> torch.Tensor:
        idx = list(range(losses.shape[1])) if indices is None else indices
        return torch.stack([self._grad(losses[:, i].sum(), x, retain=j < len(idx) - 1) for j, i in enumerate(idx)])

    def _grad(self, scalar: torch.Tensor, x: torch.Tensor, retain: bool = False) -> torch.Tensor:
        (g,) = torch.autograd.grad(scalar, x, retain_graph=retain)
        return g

    def _batch_losses(self, model, x, targets, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: the sum over ``indices`` of the tasks' batch losses (with the graph
        to ``x``) and the detached per-sample losses (B, T)."""
        outputs = model(x)
        total = sum(self.tasks[i].loss(outputs[self.tasks[i].name], targets, "mean") for i in indices)
        return total, output_losses(outputs, targets, self.tasks).detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SingleTask(Objective):
    """SINGLE-X: the loss of one task."""

    def __init__(self, tasks: list[Task], task: str) -> None:
        super().__init__(tasks)
        names = [t.name for t in self.tasks]
        if task not in names:
            raise UserError(f"{single_name(task)}: the model has no task {task!r} (tasks: {', '.join(names)})")
        self.index = names.index(task)
        self.loss_tasks = [self.index]
        self.task = task
        self.name = single_name(task)

    def direction(self, model, x, targets):
        if self.batch_loss:
            total, losses = self._batch_losses(model, x, targets, self.loss_tasks)
            return self._grad(total, x), losses
        losses = self.losses(model, x, targets)
        return self._grad(losses[:, self.index].sum(), x), losses.detach()

    def score(self, losses, clean):
        return losses[:, self.index]

    def task_gradients(self, model, x, targets):
        if self.batch_loss:
            return self._batch_task_gradients(model, x, targets, [self.index])
        losses = self.losses(model, x, targets)
        return self._split_grads(losses, x, [self.index]), losses.detach()


class Total(Objective):
    """TOTAL: the sum of the task losses."""

    name = "total"

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__(tasks)
        self.loss_tasks = list(range(len(self.tasks)))

    def direction(self, model, x, targets):
        if self.batch_loss:
            total, losses = self._batch_losses(model, x, targets, self.loss_tasks)
            return self._grad(total, x), losses
        losses = self.losses(model, x, targets)
        return self._grad(losses.sum(), x), losses.detach()

    def score(self, losses, clean):
        return losses.sum(1)


class SignTotal(Objective):
    """SIGNTOTAL: the sum of the signs of the per-task gradients (one forward, T backward passes
    through the retained graph)."""

    name = "signtotal"

    def direction(self, model, x, targets):
        grads, losses = self.task_gradients(model, x, targets)
        return grads.sum(0), losses

    def task_gradients(self, model, x, targets):
        losses = self.losses(model, x, targets)
        return self._split_grads(losses, x).sign(), losses.detach()


class GBMTA(Objective):
    """GB-MTA: per sample, sum_i grad L_i / L_i, computed as grad sum_i log L_i (one backward)."""

    name = "gb-mta"

    def direction(self, model, x, targets):
        losses = self.losses(model, x, targets)
        return self._grad(losses.clamp_min(_LOG_FLOOR).log().sum(), x), losses.detach()

    def task_gradients(self, model, x, targets):
        losses = self.losses(model, x, targets)
        norm = losses.detach().clamp_min(_LOG_FLOOR).T.reshape(losses.shape[1], -1, *([1] * (x.dim() - 1)))
        return self._split_grads(losses, x) / norm, losses.detach()


ObjectiveFactory = Callable[[list[Task]], Objective]


def _check_objective(name: str, factory: ObjectiveFactory) -> None:
    if name.startswith(SINGLE):
        raise ValueError(f"objective name {name!r} is taken: single-<task> names the single-task objectives")
    if not callable(factory):
        raise TypeError(f"@register_objective({name!r}) needs a class or function of the task list, got {factory!r}")


#: the multi-task objectives by name (``single-<task>`` is built for any task and not registered)
OBJECTIVES: Registry[ObjectiveFactory] = Registry("objective", group="mtlbench.objectives", check=_check_objective,
                                                  forbidden=":")
OBJECTIVES.register("total", Total)
OBJECTIVES.register("signtotal", SignTotal)
OBJECTIVES.register("gb-mta", GBMTA)


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    """Register a new objective class (constructed with the task list); ``optimizer:name`` then
    combines it with every optimizer."""
    return OBJECTIVES.register(name)


def find_task(short: str, tasks: list[Task]) -> Task | None:
    """The task that ``single-<short>`` names (by full name, short name or label), or None."""
    return next((t for t in tasks if short in (t.name, TASK_SHORT_NAMES.get(t.name), t.label.lower())), None)


class SingleX(NamedTuple):
    """A parsed ``single-X`` objective: the task it names (its full name when one of the tasks
    matched, else X as written), its canonical name (``single-<short>``), and whether X matched."""

    task: str
    name: str
    found: bool


def single_name(task: str) -> str:
    """The canonical ``single-X`` name of the objective of ``task`` (a full task name)."""
    return f"{SINGLE}{TASK_SHORT_NAMES.get(task, task)}"


def parse_single(objective: str, tasks: list[Task]) -> SingleX | None:
    """``single-X`` (X a task's full name, short name or label among ``tasks``) parsed; None for
    any other objective. Every ``single-X`` of a name, a manifest or a run is read here."""
    key = objective.strip().lower()
    if not key.startswith(SINGLE):
        return None
    short = key.removeprefix(SINGLE)
    match = find_task(short, tasks)
    task = match.name if match is not None else short
    return SingleX(task, single_name(task), match is not None)


def create_objective(name: str, tasks: list[Task], *, batch_loss: bool = False) -> Objective:
    """``single-<task>`` (short or full task name), ``total``, ``signtotal``, ``gb-mta`` or a
    registered name. ``batch_loss``: TOTAL and SINGLE-X follow the authors' batch loss (GB-MTA
    and SIGNTOTAL use per-sample losses in their code as in ours)."""
    key = name.strip().lower()
    single = parse_single(key, tasks)
    if single is not None:
        objective = SingleTask(tasks, single.task)
    elif key not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; known: {', '.join(list_objectives(tasks))}")
    else:
        objective = OBJECTIVES.get(key)(tasks)
    objective.batch_loss = bool(batch_loss)
    return objective


def list_objectives(tasks: list[Task], pattern: str = "*") -> list[str]:
    names = [single_name(t.name) for t in tasks] + OBJECTIVES.names()
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
