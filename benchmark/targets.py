"""``Target``: what a cell attacks.

A target is a suite member (optionally wrapped or retrained by a defense) or an external model.
It is plain data (strings), so it pickles and a Ray worker rebuilds the same model from it; it
knows whether its weights are on this machine, loads itself on a device with the revision or hash
that identifies its weights (:func:`resolve`: the one way any kind of target is loaded), and
describes itself (layout, parameters, sharing level, defense) for the store and the leaderboard.

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

from benchmark.enums import DefenseKind, ExternalKind, Origin
from benchmark.errors import UserError
from benchmark.suites import Member, Suite, load_suite

__all__ = ["External", "LoadedTarget", "Target", "freeze", "resolve", "suite_ref"]


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


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, parameter gradients off: how every target is attacked."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass
class LoadedTarget:
    """A target's model on a device, in eval mode with parameter gradients off."""

    model: torch.nn.Module
    revision: str  # the pinned Hub revision, or local-sha256:<tensor hash> of local weights
    origin: Origin  # where the weights came from
    info: Any = None  # the checkpoint's CheckpointInfo


def _fast_layout(model: torch.nn.Module, device) -> torch.nn.Module:
    """A loaded checkpoint's model as evaluated here: on the CPU in channels-last order (faster
    attack steps, the same function; :meth:`BranchedModel.use_channels_last`)."""
    if torch.device(device).type == "cpu" and hasattr(model, "use_channels_last"):
        model.use_channels_last()
    return model


@dataclass(frozen=True)
class External:
    """An external model: a Hub-format checkpoint directory (``where``: its absolute path) or an
    ``nn.Module`` given in this process (``where``: its class), which cannot be rebuilt elsewhere."""

    kind: ExternalKind
    where: str


@dataclass(frozen=True)
class Target:
    """A suite member as an attack target.

    ``weights_dir`` says where local checkpoints live (``DIR/<member>/``); it is a location, not
    an identity: results are keyed by the revision or hash of the weights actually loaded."""

    suite: str  # suite name or absolute manifest path (see :func:`suite_ref`)
    member: str
    weights_dir: str | None = None
    defense: str | None = None  # canonical defense (``bitdepth:4``, ``fat:pgd:gb-mta``), None: undefended
    eot_samples: int = 1  # EOT draws per model call while attacking a randomised defense
    #: an external model (not a suite member; ``member`` is then its name), None for a member
    external: External | None = None
    score_draws: int = 1  # draws of a randomised defense over which its images are scored

    @classmethod
    def of(cls, suite: str | Path, member: str, *, weights_dir: str | Path | None = None,
           defense: str | None = None, eot_samples: int = 1, score_draws: int = 1) -> Target:
        from benchmark.defenses import parse_defense

        d = parse_defense(defense)
        defense_name = None if d is None else d.canonical_name
        randomised = d is not None and getattr(d, "randomised", False)
        eot_samples, score_draws = (int(eot_samples), int(score_draws)) if randomised else (1, 1)
        if eot_samples < 1 or score_draws < 1:
            raise UserError(f"EOT samples and scoring draws must be >= 1, got {eot_samples} and {score_draws}")
        return cls(suite_ref(suite), member, None if weights_dir is None else str(Path(weights_dir).resolve()),
                   defense_name, eot_samples, score_draws=score_draws)

    @classmethod
    def external_model(cls, suite: str | Path, source: str | Path | torch.nn.Module, *, name: str | None = None,
                       defense: str | None = None, eot_samples: int = 1, score_draws: int = 1) -> Target:
        """A model that is not a suite member, scored on the suite's data and tasks: a Hub-format
        checkpoint directory, or an ``nn.Module`` of this process."""
        from benchmark.defenses import parse_defense
        from benchmark.suites import VALID_NAME

        if isinstance(source, torch.nn.Module):
            external = External(ExternalKind.MODULE, f"{type(source).__module__}.{type(source).__qualname__}")
            default = type(source).__name__
        else:
            directory = Path(source)
            if not directory.is_dir():
                raise UserError(f"--model {directory}: not a directory (a Hub-format checkpoint directory holds "
                                "model.safetensors, config.json and README.md)")
            from benchmark.zoo.checkpoint import read_config

            read_config(directory)  # refuses a directory that is not a checkpoint, naming the file
            external, default = External(ExternalKind.DIR, str(directory.resolve())), directory.resolve().name
        name = name or default
        if not VALID_NAME.fullmatch(name):
            raise UserError(f"model name {name!r} is not valid (letters, digits, '.', '_', '-')")
        suite_obj = load_suite(suite) if not isinstance(suite, Suite) else suite
        if any(m.name == name for m in suite_obj.members):
            raise UserError(f"{name!r} is the name of a member of {suite_obj.name}; give the external model "
                            "another name (name=... / --name)")
        d = parse_defense(defense)
        if d is not None and d.kind == DefenseKind.TRAINING:
            raise UserError(f"{d.canonical_name} trains suite members (`mtlbench defend`); an external model can be "
                            "run behind an inference-time defense only")
        randomised = d is not None and getattr(d, "randomised", False)
        eot_samples, score_draws = (int(eot_samples), int(score_draws)) if randomised else (1, 1)
        return cls(suite_obj.ref, name, None, None if d is None else d.canonical_name, eot_samples, external,
                   score_draws=score_draws)

    @property
    def in_memory(self) -> bool:
        """An ``nn.Module`` given in this process: it is loaded by the caller, never rebuilt."""
        return self.external is not None and self.external.kind == ExternalKind.MODULE

    @property
    def input_size(self) -> int:
        """The resolution the target is scored at: its member's, or the suite's for an external model."""
        return self.suite_spec.members[0].input_size if self.external else self.member_spec.input_size

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

    @property
    def trained_defense(self) -> bool:
        """Whether the defense produced new weights (FAT), rather than wrapping the member."""
        from benchmark.defenses import create_defense

        return self.defense is not None and create_defense(self.defense).kind == DefenseKind.TRAINING

    def is_built(self) -> bool:
        """Whether the weights are on this machine (loading neither trains nor downloads)."""
        if self.external:
            return True
        if self.trained_defense:
            from benchmark.zoo.locate import locate_defended

            return locate_defended(self.suite_spec, self.member_spec, self.defense, weights_dir=self.weights_dir).found
        from benchmark.zoo.locate import is_built

        return is_built(self.suite_spec, self.member_spec, weights_dir=self.weights_dir)

    def load(self, device: str | torch.device = "cpu") -> LoadedTarget:
        """The model on ``device`` as it is attacked: :func:`resolve`'s, frozen (eval mode, no
        parameter gradients), in the CPU's fast memory layout, behind the target's inference-time
        defense."""
        loaded = resolve(self, device)
        model = self.wrap(_fast_layout(freeze(loaded.model), device))
        return LoadedTarget(model=model, revision=loaded.revision, origin=loaded.origin, info=loaded.info)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` behind the target's inference-time defense (unchanged without one)."""
        if self.defense is None or self.trained_defense:
            return model
        from benchmark.defenses import DefendedModel, Detector, DetectorModel, create_defense

        defense = create_defense(self.defense)
        if isinstance(defense, Detector):
            if defense.learned:  # its head, trained for this member
                from benchmark.zoo.detectors import load_head

                if self.external:
                    raise UserError(f"{defense.canonical_name} has a head trained per suite member; an external model "
                                    "has none")
                device = next(model.parameters()).device
                defense.use(load_head(self.suite_spec, defense.name, self.member, device))
            return DetectorModel(model, defense, self.suite_spec.tasks).eval()
        return DefendedModel(model, defense, eot_samples=self.eot_samples).eval()

    def describe(self) -> dict[str, Any]:
        """What the store and the leaderboard show about the target (no weights needed)."""
        if self.external:
            return self._describe_external()
        from benchmark.models.layouts import Layout

        suite, member = self.suite_spec, self.member_spec
        tasks = suite.tasks
        layout = Layout.parse(member.layout, num_tasks=len(tasks))
        pairs = [(a, b) for a in range(len(tasks)) for b in range(a + 1, len(tasks))]
        return {
            "layout": member.layout, "paper_index": member.index, "backbone": member.backbone,
            "width": member.width, "input_size": member.input_size,
            "backbone_params": member.backbone_parameters(len(tasks)),
            "shared_blocks": layout.shared_blocks, "block_copies": layout.num_block_copies,
            "layout_sets": layout.to_json(), "tasks": [t.name for t in tasks], "dataset": suite.dataset,
            "data": suite.data_source, "repo_id": member.repo_id,
            "mean_branch_block": sum(layout.branch_block(a, b) for a, b in pairs) / max(1, len(pairs)),
            "kind": "suite member", "member": member.name, **self._defense_info(),
        }

    def _describe_external(self) -> dict[str, Any]:
        suite = self.suite_spec
        out: dict[str, Any] = {"kind": "external", "member": self.member, "tasks": [t.name for t in suite.tasks],
                               "dataset": suite.dataset, "data": suite.data_source, "input_size": self.input_size,
                               "source": self.external.where,
                               "loaded_from": "checkpoint directory" if self.external.kind == ExternalKind.DIR
                               else "nn.Module (benchmark.evaluate)"}
        if self.external.kind == ExternalKind.DIR:
            from benchmark.models.layouts import Layout
            from benchmark.zoo.checkpoint import read_config

            info = read_config(self.external.where)
            layout = Layout.parse(info.model.layout, num_tasks=len(info.model.tasks))
            out.update(layout=info.model.layout, backbone=info.model.backbone, width=info.model.width,
                       shared_blocks=layout.shared_blocks, layout_sets=layout.to_json())
        return {**out, **self._defense_info()}

    def _defense_info(self) -> dict[str, Any]:
        if self.defense is None:
            return {"defense": None}
        from benchmark.defenses import create_defense

        d = create_defense(self.defense)
        if d.kind == DefenseKind.TRAINING:
            return {"defense": d.canonical_name, "defense_kind": "training", "randomised": False,
                    "differentiable": True, "eot": 1, "gradient": "exact", "trained_with": d.attack.name,
                    **self._defended_record()}
        gradient = []
        if d.randomised:
            gradient.append(f"EOT over {self.eot_samples} draws")
        if not d.differentiable:
            gradient.append("BPDA (straight-through)")
        return {"defense": d.canonical_name, "defense_kind": d.kind, "randomised": d.randomised,
                "differentiable": d.differentiable, "eot": self.eot_samples,
                "gradient": "; ".join(gradient) or "exact", "score_draws": self.score_draws}

    def _defended_record(self) -> dict[str, Any]:
        """The recipe and parent hash of a trained defense, from its checkpoint's config."""
        from benchmark.zoo.checkpoint import read_config
        from benchmark.zoo.locate import locate_defended

        location = locate_defended(self.suite_spec, self.member_spec, self.defense, weights_dir=self.weights_dir)
        if not location.found:
            return {}
        record = read_config(location.directory).defense
        return {"recipe": record.get("recipe", {}), "parent_sha256": record.get("parent_sha256")}


def resolve(target: Target, device: str | torch.device = "cpu") -> LoadedTarget:
    """The one way a target's model is loaded, whatever its kind: a suite member
    (:func:`~benchmark.zoo.locate.find_member`: ``--weights-dir``, shipped, the local zoo or the Hub
    at the pinned revision), a member under a training defense
    (:func:`~benchmark.zoo.locate.find_defended`), or an external checkpoint directory. It finds and
    loads, never trains: what is not on this machine is an error naming the command that builds it
    (a run's plan builds it before any cell). The weights' sha256 is checked where the manifest
    pins it; the model comes in eval mode, as stored (:meth:`Target.load` makes it ready to attack)."""
    from benchmark.attacks.validate import model_fingerprint
    from benchmark.zoo.locate import find_defended, find_member, load_location, locate_external

    if target.in_memory:
        raise UserError(f"{target.name} is an nn.Module of the process that created it: evaluate it there "
                        "(benchmark.evaluate, local executor), or save it as a checkpoint directory")
    if target.external:
        location = locate_external(target.external.where)
    elif target.trained_defense:
        location = find_defended(target.suite_spec, target.member_spec, target.defense, weights_dir=target.weights_dir)
    else:
        location = find_member(target.suite_spec, target.member_spec, weights_dir=target.weights_dir)
    model, info = load_location(location, device)
    revision = (target.member_spec.revision if location.origin == Origin.HUB
                else f"local-sha256:{model_fingerprint(model)[:16]}")
    return LoadedTarget(model=model, revision=revision, origin=location.origin, info=info)
