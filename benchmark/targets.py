"""``Target``: what a cell attacks.

A target is a suite member (optionally wrapped or retrained by a defense) or an external model.
It is plain data (strings), so it pickles and a Ray worker rebuilds the same model from it; it
knows whether its weights are on this machine, loads itself on a device with the revision or hash
that identifies its weights, and describes itself (layout, parameters, sharing level, defense) for
the store and the leaderboard.

>>> target = Target("tiny-nyuv2-resnet34", "AS")
>>> target.name, target.describe()["shared_blocks"]
('AS', 5)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import UserError
from benchmark.suites import Member, Suite, load_suite

__all__ = ["LoadedTarget", "Target", "suite_ref"]


def suite_ref(name_or_path: str | Path) -> str:
    """How a target names its suite: a standard suite by name, a manifest by its absolute path
    (so a worker in another directory finds the same file)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return str(p.resolve())
    return str(name_or_path)


@functools.lru_cache(maxsize=32)
def _suite(ref: str) -> Suite:
    return load_suite(ref)


@dataclass
class LoadedTarget:
    """A target's model on a device, in eval mode with parameter gradients off."""

    model: torch.nn.Module
    revision: str  # the pinned Hub revision, or local-sha256:<tensor hash> of local weights
    origin: str  # hub, local or weights-dir
    info: Any = None  # the checkpoint's CheckpointInfo


@dataclass(frozen=True)
class Target:
    """A suite member as an attack target.

    ``weights_dir`` says where local checkpoints live (``DIR/<member>/``); it is a location, not
    an identity: results are keyed by the revision or hash of the weights actually loaded."""

    suite: str  # suite name or absolute manifest path (see :func:`suite_ref`)
    member: str
    weights_dir: str | None = None
    defense: str | None = None  # canonical inference-time defense (``bitdepth:4``), None: undefended
    eot: int = 1  # EOT samples per model call while attacking a randomised defense

    @classmethod
    def of(cls, suite: str | Path, member: str, *, weights_dir: str | Path | None = None,
           defense: str | None = None, eot: int = 1) -> Target:
        from benchmark.defenses import parse_defense

        d = parse_defense(defense)
        if d is not None and d.kind != "inference":
            raise UserError(f"defense {d.spec!r} is a training defense: its checkpoints come from "
                            f"`mtlbench defend`, not from wrapping the model")
        spec = None if d is None else d.spec
        eot = int(eot) if d is not None and d.randomised else 1
        if eot < 1:
            raise UserError(f"EOT samples must be >= 1, got {eot}")
        return cls(suite_ref(suite), member, None if weights_dir is None else str(Path(weights_dir).resolve()),
                   spec, eot)

    @property
    def name(self) -> str:
        """How the target is named in results and on the leaderboard: the member, and its defense."""
        return self.member if self.defense is None else f"{self.member}+{self.defense}"

    @property
    def suite_spec(self) -> Suite:
        return _suite(self.suite)

    @property
    def member_spec(self) -> Member:
        return self.suite_spec.member(self.member)

    def is_built(self) -> bool:
        """Whether the weights are on this machine (loading neither trains nor downloads)."""
        from benchmark.zoo.hub import is_built

        return is_built(self.suite_spec, self.member_spec, weights_dir=self.weights_dir)

    def load(self, device: str | torch.device = "cpu", *, console=None) -> LoadedTarget:
        """The model on ``device`` (a tiny member is built on first use; a published one comes
        from the Hub at its pinned revision, its sha256 checked)."""
        from benchmark.attacks.validate import model_fingerprint
        from benchmark.zoo.build import load_model

        model, info = load_model(self.suite_spec, self.member_spec, weights_dir=self.weights_dir, device=device,
                                 console=console)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        member = self.member_spec
        revision = member.revision if info.origin == "hub" else f"local-sha256:{model_fingerprint(model)[:16]}"
        if self.defense is not None:
            from benchmark.defenses import DefendedModel, create_defense

            model = DefendedModel(model, create_defense(self.defense), eot_samples=self.eot).eval()
        return LoadedTarget(model=model, revision=revision, origin=info.origin, info=info)

    def describe(self) -> dict[str, Any]:
        """What the store and the leaderboard show about the target (no weights needed)."""
        from benchmark.models.branched import count_backbone_parameters
        from benchmark.models.layouts import Layout

        suite, member = self.suite_spec, self.member_spec
        tasks = suite.tasks
        layout = Layout.parse(member.layout, num_tasks=len(tasks))
        pairs = [(a, b) for a in range(len(tasks)) for b in range(a + 1, len(tasks))]
        return {
            "layout": member.layout, "paper_index": member.index, "backbone": member.backbone,
            "width": member.width, "input_size": member.input_size,
            "backbone_params": count_backbone_parameters(layout, member.backbone, member.width, member.output_stride),
            "shared_blocks": layout.shared_blocks, "block_copies": layout.num_block_copies,
            "layout_sets": layout.to_json(), "tasks": [t.name for t in tasks], "dataset": suite.dataset,
            "data": suite.data_source, "repo_id": member.repo_id,
            "mean_branch_block": sum(layout.branch_block(a, b) for a, b in pairs) / max(1, len(pairs)),
            "kind": "suite member", "member": member.name, **self._defense_info(),
        }

    def _defense_info(self) -> dict[str, Any]:
        if self.defense is None:
            return {"defense": None}
        from benchmark.defenses import create_defense

        d = create_defense(self.defense)
        gradient = []
        if d.randomised:
            gradient.append(f"EOT over {self.eot} draws")
        if not d.differentiable:
            gradient.append("BPDA (straight-through)")
        return {"defense": d.spec, "defense_kind": d.kind, "randomised": d.randomised,
                "differentiable": d.differentiable, "eot": self.eot, "gradient": "; ".join(gradient) or "exact"}
