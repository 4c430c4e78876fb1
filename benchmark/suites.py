"""Suite manifests: ``suites/*.toml``, loaded and validated at the edge.

A suite fixes a data set and its tasks, a backbone, the member models (layout, paper index, Hub
repo id, pinned revision, sha256 of the weights), the evaluation split, the training recipe of its
members (``[training]``) and of its training defenses (``[defenses]``, refined per defense by
``[defenses.<name>]``: FAT, PGD-AT and any registered one), and named *profiles* (``quick`` for
demos and CI, ``paper`` for the paper's protocol; the first is the suite's headline): the eps grid,
the attacks, their step budgets, the number of evaluation images, the seeds and the defenses.

A *tiny mirror* (``mirror = "nyuv2-resnet34"``) takes its members' layouts from the full suite
and overrides the backbone size and resolution; its weights ship with mtlbench, pinned by sha256
in its ``[weights]`` table, or are built from its recipe (``mtlbench zoo build``).

>>> suite = load_suite("tiny-nyuv2-resnet34")
>>> suite.member("AS").layout
'[[{0,1,2}], [{0,1,2}], [{0,1,2}], [{0,1,2}], [{0,1,2}]]'
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from benchmark.enums import DefenseKind
from benchmark.errors import UserError
from benchmark.recipe import TrainRecipe
from benchmark.schema import TableError, check_keys, check_table, read_table, setting

__all__ = ["ImagenetTable", "Member", "PretextRecipe", "Profile", "Suite", "SuiteError", "Training", "list_suites",
           "load_suite", "suites_dir"]

#: the longest cell time limit a profile or --cell-timeout may set (a week), in seconds
MAX_CELL_TIMEOUT = 7 * 86400
#: the most images a profile may evaluate or a recipe may train on (a synthetic split of that many
#: 64x64 scenes with their ground truth is about 0.6 GB in memory)
MAX_EVAL_SIZE = 50_000
#: images of a synthetic split when nothing else says how many
SYNTHETIC_SPLIT_SIZE = 256
_REVISION = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: a Hugging Face Hub repo id, ``owner/name``
#: a Hub repo id as the Hub accepts it: owner/name, each starting and ending with a letter or digit,
#: without ".." or "--" (huggingface_hub refuses those with a traceback of its own)
REPO_ID = re.compile(r"(?!.*(\.\.|--))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?")
_HUB_NAME = re.compile(r"(?!.*(\.\.|--))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?")
#: a file inside a Hub repo: a relative path of plain names (no "..", no leading "/")
_REPO_FILE = re.compile(r"(?!.*(^|/)\.\.?(/|$))[\w.-]+(/[\w.-]+)*")
#: Bumped when the way members are trained changes beyond what the manifest says (2: members
#: of a tiny suite start from a common pre-trained backbone instead of a warm-start member; 3: the
#: heads' dropout masks are drawn with ``rand`` in one call per layer, another random stream)
TRAINING_VERSION = 3
#: the output strides every backbone offers (benchmark.models.backbones)
OUTPUT_STRIDES = (8, 16, 32)
#: the pretext objectives of a common pre-trained backbone (benchmark.zoo.pretext)
PRETEXT_OBJECTIVES = ("rotation", "masked")
VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SuiteError(UserError):
    """A manifest that cannot be used; the message names the file and the key."""


def suites_dir() -> Path:
    """Where the standard manifests live: inside the installed package (wheel) or, in a source
    checkout, the repository's ``suites/`` folder."""
    packaged = Path(__file__).parent / "_suites"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "suites"


@dataclass(frozen=True)
class Member:
    """One model of a suite."""

    name: str
    layout: str  # TreeMTL notation, IND or AS
    index: int | None  # paper index (position in TreeMTL's enumeration); None for IND/AS
    backbone: str
    width: float
    input_size: int
    repo_id: str = ""  # Hugging Face Hub repo id ("" for locally built tiny mirrors)
    revision: str = ""  # pinned commit (40 hex) once published, else ""
    sha256: str = ""  # of model.safetensors once published, else ""
    head_hidden: int | None = None
    head_rates: tuple[int, ...] = (6, 12, 18, 24)
    output_stride: int | None = None  # None: the backbone's default

    def backbone_parameters(self, num_tasks: int) -> int:
        """Backbone parameters of the member's layout (every block copy), as the paper's tables
        count them."""
        from benchmark.models.branched import count_backbone_parameters
        from benchmark.models.layouts import Layout

        layout = Layout.parse(self.layout, num_tasks=num_tasks)
        return count_backbone_parameters(layout, self.backbone, self.width, self.output_stride)

    @property
    def published(self) -> bool:
        return bool(self.repo_id and self.revision and self.sha256)


def _each(ok: Callable[[Any], bool], what: str, *, empty: bool = True) -> Callable[[list], str | None]:
    """A check that every item of a list is ``ok`` (and, unless ``empty``, that there is one)."""
    return lambda items: None if (items or empty) and all(ok(v) for v in items) else f"expected {what}, got {items!r}"


def _integer(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _attack_patterns(patterns: list) -> str | None:
    from benchmark.attacks import list_attacks

    known = list_attacks()
    for pattern in patterns:
        if not isinstance(pattern, str) or not any(fnmatch.fnmatch(a, pattern) for a in known):
            return f"{pattern!r} matches no registered attack (see `mtlbench attacks list`)"
    return None


def _defense_names(names: list) -> str | None:
    from benchmark.defenses import canonical_defense

    for d in names:
        if not isinstance(d, str):
            return f"expected defense names such as 'bitdepth:4', got {d!r}"
        try:
            canonical_defense(d)
        except UserError as exc:
            return str(exc)
    return None


def _step_budgets(table: dict) -> tuple[str, str] | None:
    for key, values in table.items():
        if not isinstance(values, list) or not values or not all(map(_integer(1, 100_000), values)):
            return key, f"expected a list of step counts in [1, 100000], got {values!r}"
    return None


def _steps(table: dict) -> tuple[str, str] | None:
    for key, value in table.items():
        if not _integer(1, 2**31)(value):
            return key, f"expected a positive integer, got {value!r}"
    return None


def _attack_options(table: dict) -> tuple[str, str] | None:
    """Each optimizer's options: scalars the attack takes (it is created with them)."""
    from benchmark.attacks import create_attack, list_attacks

    known = list_attacks()
    for key, values in table.items():
        if not (isinstance(values, dict) and all(isinstance(v, str | int | float | bool) for v in values.values())):
            return key, f"expected a table of option = value (string, number or boolean), got {values!r}"
        name = next((a for a in known if a == key or a.startswith(f"{key}:")), None)
        if name is None:
            return key, f"{key!r} is not a registered attack"
        try:
            create_attack(name, **values)
        except UserError as exc:
            return key, str(exc)
    return None


def _names(items: list | None) -> tuple[str, ...] | None:
    return None if items is None else tuple(items)


_MODEL_NAMES = _each(lambda m: isinstance(m, str), "a list of model names")


@dataclass(frozen=True)
class Profile:
    """How a suite is evaluated (a manifest's ``[profiles.<name>]`` table, every entry checked by
    its field's rule): eps grid (0-255 units), attacks (patterns such as ``pgd:*``), steps per
    optimizer, evaluation images, seeds and batch size."""

    name: str = setting(table=False)
    eps: tuple[float, ...] = setting(types=list, convert=lambda v: tuple(float(e) for e in v),
                                     check=_each(lambda e: isinstance(e, int | float) and not isinstance(e, bool)
                                                 and 0 < e <= 255, "a list of numbers in (0, 255] (0-255 pixel units)",
                                                 empty=False))
    attacks: tuple[str, ...] = setting(types=list, convert=tuple, check=_attack_patterns)
    steps: dict[str, int] = setting(factory=dict, types=dict, check=_steps, convert=dict)
    eval_size: int | None = setting(None, low=1, high=MAX_EVAL_SIZE)  # None: the whole split
    seeds: tuple[int, ...] = setting((0,), types=list, convert=tuple,
                                     check=_each(_integer(-2**63, 2**63 - 1), "a list of integers", empty=False))
    batch_size: int = setting(8, low=1, high=4096)
    description: str = setting("")
    #: seconds one cell may take before it is stored as failed (0: no limit)
    cell_timeout: float = setting(1800.0, low=0, high=MAX_CELL_TIMEOUT)
    #: targets per member: undefended, inference-time and FAT defenses
    defenses: tuple[str, ...] = setting(("none",), types=list, convert=tuple, check=_defense_names)
    eot_samples: int = setting(4, low=1, high=1000)  # EOT draws per model call when attacking a randomised defense
    #: draws of a randomised defense over which its clean and adversarial images are scored (the
    #: metrics pooled over the draws: what a user of the deployed defense sees on average)
    score_draws: int = setting(8, low=1, high=1000)
    #: members that get the defended targets (None: all)
    defended_models: tuple[str, ...] | None = setting(None, types=list, convert=_names, check=_MODEL_NAMES)
    #: the members the profile evaluates (None: all)
    models: tuple[str, ...] | None = setting(None, types=list, convert=_names,
                                             check=_each(lambda m: isinstance(m, str), "a non-empty list of model "
                                                         "names", empty=False))
    #: extra step budgets per optimizer (``{"pgd": (1, 2, 10)}``) for the ARP-at-equal-compute curves,
    #: run on ``budget_models`` (None: every member) besides the ``steps`` of the protocol
    budgets: dict[str, tuple[int, ...]] = setting(factory=dict, types=dict, check=_step_budgets,
                                                  convert=lambda t: {k: tuple(dict.fromkeys(v)) for k, v in t.items()})
    budget_models: tuple[str, ...] | None = setting(None, types=list, convert=_names, check=_MODEL_NAMES)
    #: each optimizer's preset and options (``{"apgd": {"preset": "paper", "random_start": False}}``),
    #: applied to every attack of that optimizer and stored in its cells' configuration
    options: dict[str, dict[str, Any]] = setting(factory=dict, types=dict, check=_attack_options,
                                                 convert=lambda t: {k: dict(v) for k, v in t.items()})
    #: attacks run only on the members that get defenses (each of their targets, the undefended
    #: one included): the black-box attack of the gradient-masking checks
    defense_attacks: tuple[str, ...] = setting((), types=list, convert=tuple, check=_attack_patterns)
    #: transfer attacks (a cross-model matrix): each profile attack crafted white-box on each of
    #: these undefended members (``["*"]``: every member) and scored on every other target
    transfer_from: tuple[str, ...] | None = setting(None, types=list, convert=_names, check=_MODEL_NAMES)
    #: each defended target also gets the profile's attacks crafted on its own undefended member
    #: (the transfer attack of the gradient-masking checks)
    defense_transfer: bool = setting(False)
    #: the first N evaluation images whose adversarial versions and predictions every cell keeps
    #: for the leaderboard's inspection pages (about 10 KB per image and cell at 48x48)
    inspect_images: int = setting(0, low=0, high=64)


def _pinned(pattern: re.Pattern, what: str) -> Callable[[str], str | None]:
    return lambda value: None if not value or pattern.fullmatch(value) else f"{value!r} is not {what}"


@dataclass(frozen=True)
class DetectorRecipe:
    """How a learned detector's head is trained on a member's clean predictions (the manifest's
    ``[detectors]`` table): steps of ``batch_size`` images of the suite's training split."""

    steps: int = setting(600, low=1, high=10_000_000)
    batch_size: int = setting(16, low=1, high=65_536)
    lr: float = setting(2e-3, low=1e-12, high=10)
    train_size: int = setting(1024, low=1, high=MAX_EVAL_SIZE)
    hidden: int = setting(32, low=4, high=1024)
    seed: int = setting(0, low=0, high=2**62)

    @classmethod
    def from_table(cls, table: dict | None) -> DetectorRecipe:
        return read_table(cls, table or {}, "detectors")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PretextRecipe:
    """How a suite's common backbone is pre-trained (the manifest's ``[training.pretext]`` table)."""

    objective: str = setting(PRETEXT_OBJECTIVES[0], choices=PRETEXT_OBJECTIVES)
    steps: int = setting(150, low=1, high=10_000_000)
    batch_size: int = setting(8, low=1, high=65_536)  # images per step (rotation shows each in its 4 rotations)
    lr: float = setting(3e-3, low=1e-12, high=10)
    weight_decay: float = setting(1e-4, low=0, high=10)
    train_size: int = setting(512, low=1, high=MAX_EVAL_SIZE)
    #: the seed of the pretext scenes (a different draw from the training scenes' seed 0) and of
    #: the initial weights and batch order
    seed: int = setting(7, low=0, high=2**62)

    @classmethod
    def from_table(cls, table: dict | None) -> PretextRecipe:
        return read_table(cls, table or {}, "training.pretext")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImagenetTable:
    """Where a full suite's ImageNet backbone weights are (``[training.imagenet]``; each entry
    defaults to the backbone's known source)."""

    repo_id: str = setting("", check=_pinned(REPO_ID, "a Hub repo id ('owner/name')"))
    revision: str = setting("", check=_pinned(_REVISION, "a pinned commit (40 lowercase hex digits)"))
    sha256: str = setting("", check=_pinned(_SHA256, "a sha256 (64 lowercase hex digits)"))
    file: str = setting("model.safetensors", check=_pinned(_REPO_FILE, "a file of the repo (a relative path, no '..')"))


#: ``[training]`` entries that say how a training runs, not what it trains (left out of the recipe's id)
RUN_ONLY_KEYS = frozenset({"checkpoint_every"})


@dataclass(frozen=True)
class Training:
    """How a suite's members are trained: the manifest's ``[training]`` table, every entry checked
    by its field's rule. ``table`` keeps the entries as written: they identify the recipe
    (:attr:`Suite.training_id`), so a default spelled out or left out is the same recipe only when
    it is the same text."""

    steps: int = setting(TrainRecipe.steps, low=1, high=10_000_000)
    batch_size: int = setting(TrainRecipe.batch_size, low=1, high=65_536)
    lr: float = setting(TrainRecipe.lr, low=1e-12, high=10)
    weight_decay: float = setting(TrainRecipe.weight_decay, low=0, high=10)
    optimizer: str = setting(TrainRecipe.optimizer, choices=("adam", "sgd"))
    schedule: str = setting(TrainRecipe.schedule, choices=("cosine", "constant"))
    seed: int = setting(TrainRecipe.seed, low=0, high=2**62)
    train_size: int = setting(512, low=1, high=MAX_EVAL_SIZE)  # synthetic scenes members train on
    warm_start: str | None = setting(None)  # the member every other one is fine-tuned from
    finetune_steps: int | None = setting(None, low=0, high=10_000_000)
    finetune_lr: float | None = setting(None, low=1e-12, high=10)
    init: str = setting("scratch", choices=("scratch", "pretext", "imagenet"))
    pretext: dict | None = setting(None, nested=PretextRecipe)
    imagenet: dict | None = setting(None, nested=ImagenetTable)
    #: the precision the weights are stored (and shipped) in
    weights_dtype: str = setting(TrainRecipe.weights_dtype, choices=("float32", "float16", "bfloat16"))
    #: steps between resume files (how the training runs, not what it trains: not part of the recipe's id)
    checkpoint_every: int = setting(500, low=1, high=10_000_000)
    table: dict = setting(factory=dict, table=False)

    @classmethod
    def from_table(cls, table: Any, where: str = "training") -> Training:
        """The recipe a ``[training]`` table says, with the cross-entry rules: the warm-start member
        and a common backbone exclude each other, and each sub-table needs its ``init``."""
        recipe = read_table(cls, table, where, table=dict(table) if isinstance(table, dict) else {})
        if recipe.init != "scratch" and recipe.warm_start is not None:
            raise TableError(f"{where}.init", f"a suite's members start either from a common backbone (init = "
                                              f"{recipe.init!r}) or from a warm-start member (warm_start), not both")
        for sub in ("pretext", "imagenet"):
            if getattr(recipe, sub) is not None and recipe.init != sub:
                raise TableError(f"{where}.{sub}", f"a [training.{sub}] table needs init = {sub!r}")
        return recipe

    def replace(self, **changes: Any) -> Training:
        """This recipe with entries replaced (a recipe of its own: another :attr:`Suite.training_id`)."""
        return Training.from_table({**self.table, **changes})

    def pretext_recipe(self) -> PretextRecipe:
        return PretextRecipe.from_table(self.pretext)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    dataset: str  # task set: "nyuv2" or "taskonomy"
    data_source: str  # the manifest's ``data``: "nyuv2"/"taskonomy" (real, needs a data root) or "synthetic-*"
    split: str
    backbone: str
    members: tuple[Member, ...]
    profiles: dict[str, Profile]
    training: Training = field(default_factory=Training)
    #: the adversarial training recipe of every training defense (FAT, PGD-AT): the ``[defenses]``
    #: table's own entries
    defense_defaults: dict[str, Any] = field(default_factory=dict)
    #: a training defense's own recipe over ``defense_defaults`` (``[defenses.<name>]``, e.g.
    #: ``[defenses.pgdat]``)
    defense_recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    mirror_of: str | None = None
    selection: str = ""
    path: Path | None = None
    #: a tiny suite's shipped defended checkpoints: defense name -> member -> sha256 of its weights
    defended_sha256: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics: str = "ours"  # metric mode: "ours" (pooled) or "paper" (the authors' code; benchmark.paper_metrics)
    #: how a learned detector's head is trained (``[detectors]``)
    detector_recipe: DetectorRecipe = field(default_factory=DetectorRecipe)
    #: a tiny suite's shipped detector heads: detector -> member -> sha256 of its weights
    detector_sha256: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """How another process loads this suite again: its manifest's absolute path, or its name."""
        return str(self.path.resolve()) if self.path is not None else self.name

    @property
    def tiny(self) -> bool:
        """Built locally on synthetic data (the tiny mirrors), not downloaded."""
        return self.mirror_of is not None or self.synthetic

    @property
    def training_id(self) -> str:
        """A short hash of the training recipe (the manifest's ``[training]`` table, the data it
        trains on, and :data:`TRAINING_VERSION`), recorded in every member built locally: a tiny
        member whose recorded id differs was built with another recipe and is rebuilt."""
        recipe = {k: v for k, v in self.training.table.items() if k not in RUN_ONLY_KEYS}
        text = json.dumps({"training": recipe, "data": self.data_source, "version": TRAINING_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def synthetic(self) -> bool:
        return self.data_source.startswith("synthetic-")

    @property
    def tasks(self) -> list:
        """The suite's tasks (:class:`~benchmark.tasks.Task`), in the models' output order."""
        from benchmark.tasks import get_tasks

        return get_tasks(self.dataset, metrics=self.metrics)

    def data(self, split: str | None = None, *, size: int | None = None, data_root: str | None = None,
             resolution: int | None = None, seed: int = 0):
        """The one way in to a suite's data: ``split`` (default: the evaluation split) of its
        synthetic scenes, or of the real data set under ``data_root`` (a real-data suite without
        one is a usage error). ``size`` images (default: a synthetic split has
        :data:`SYNTHETIC_SPLIT_SIZE`, a real one all of its images) at ``resolution`` (default:
        the members' input size)."""
        from benchmark.data import load_dataset

        self.check_data_root(data_root)
        split = split or self.split
        resolution = resolution or self.members[0].input_size
        if self.synthetic:
            return load_dataset(self.data_source, split, size=size or SYNTHETIC_SPLIT_SIZE, resolution=resolution,
                                seed=seed)
        if data_root is None:
            raise UserError(f"suite {self.name} uses the real {self.data_source} data: pass --data-root DIR "
                            "(directory format: docs/tutorials/full-suites.md)")
        return load_dataset(self.data_source, split, root=data_root, size=size, resolution=resolution)

    def check_data_root(self, data_root: str | None) -> None:
        """A suite on built-in synthetic scenes reads no data directory: a ``data_root`` given to it
        is a mistake the user hears about, not silently ignored."""
        if data_root is not None and self.synthetic:
            raise UserError(f"--data-root {data_root}: the suite {self.name} runs on mtlbench's built-in synthetic "
                            f"scenes ({self.data_source}) and reads no data directory; real data are for the full "
                            f"suites (e.g. {self.mirror_of or 'nyuv2-resnet34'})")

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name or (m.index is not None and name == str(m.index)):
                return m
        raise UserError(f"suite {self.name!r} has no model {name!r}; models: "
                        f"{', '.join(m.name for m in self.members)}")

    @property
    def headline_profile(self) -> str:
        """The profile a suite's leaderboard pages open on: the manifest's first one."""
        return next(iter(self.profiles))

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise UserError(f"suite {self.name!r} has no profile {name!r}; profiles: {', '.join(self.profiles)}")
        return self.profiles[name]

    def unpublished(self) -> list[Member]:
        """Members of a full suite whose weights are not on the Hub yet."""
        return [] if self.tiny else [m for m in self.members if not m.published]


# ---------------------------------------------------------------------- loading
_DATASETS = {"nyuv2": 3, "taskonomy": 5}
_TOP_KEYS = ("suite", "models", "profiles", "training", "defenses", "detectors", "weights")


def _valid_name(value: str) -> str | None:
    return None if VALID_NAME.fullmatch(value) else f"{value!r} is not a valid name (letters, digits, '.', '_', '-')"


def _known_backbone(value: str) -> str | None:
    from benchmark.models.backbones import list_backbones

    return None if value in list_backbones() else f"unknown backbone {value!r}; known: {', '.join(list_backbones())}"


_RATES = _each(_integer(1, 1024), "a list of dilation rates (integers in [1, 1024])", empty=False)


@dataclass(frozen=True)
class SuiteTable:
    """A manifest's ``[suite]`` table: the data set and the members' common architecture (the
    defaults that depend on the data set or on a mirrored suite are filled in by :func:`load_suite`)."""

    name: str = setting(check=_valid_name)
    dataset: str = setting(check=lambda v: None if v in _DATASETS else f"unknown dataset {v!r}; use "
                                                                       f"{' or '.join(_DATASETS)}")
    description: str = setting("")
    data: str | None = setting(None)  # default: the data set (a mirror: its synthetic scenes)
    split: str = setting("test")
    backbone: str | None = setting(None, check=_known_backbone)  # default: resnet34 (a mirror: its suite's)
    width: float = setting(1.0, low=0.01, high=8)
    input_size: int | None = setting(None, low=8, high=2048)  # default: 321 on NYUv2, 224 on Taskonomy
    head_hidden: int | None = setting(None, low=1, high=4096)
    head_rates: list = setting(factory=lambda: [6, 12, 18, 24], check=_RATES)
    output_stride: int | None = setting(None, choices=OUTPUT_STRIDES)
    mirror: str | None = setting(None, check=lambda v: None if VALID_NAME.fullmatch(v) else
                                 f"{v!r} is not a suite name (letters, digits, '.', '_', '-'; the mirrored manifest "
                                 "is looked up beside this one or among the standard suites)")
    selection: str = setting("")
    #: members' Hub repos default to <hub_org>/<suite>-<member>
    hub_org: str | None = setting(None, check=_pinned(_HUB_NAME, "a Hub user or organisation name"))
    metrics: str = setting("ours", choices=("ours", "paper"))  # pooled, or the paper authors' code


@dataclass(frozen=True)
class MemberTable:
    """A manifest's ``[[models]]`` entry: a layout (or its paper index), its name, where its
    weights are published, and what it changes of the suite's architecture."""

    layout: str = setting()
    name: str | None = setting(None, check=_valid_name)  # default: AS, IND or layout-<index>
    index: int | None = setting(None)
    backbone: str | None = setting(None, check=_known_backbone)
    width: float | None = setting(None, low=0.01, high=8)
    input_size: int | None = setting(None, low=8, high=2048)
    head_hidden: int | None = setting(None, low=1, high=4096)
    head_rates: list | None = setting(None, check=_RATES)
    repo_id: str | None = setting(None, check=_pinned(REPO_ID, "a Hub repo id ('owner/name')"))
    revision: str = setting("", check=_pinned(_REVISION, "a pinned commit (40 lowercase hex digits); branch and "
                                                         "tag names move, so they are not accepted"))
    sha256: str = setting("", check=_pinned(_SHA256, "a sha256 (64 lowercase hex digits)"))


def _recipe_table(table: Any, where: str, base: dict[str, Any]) -> dict[str, Any]:
    """An adversarial training recipe table, its keys and values checked by the recipe class's
    rules (over ``base``: the common recipe a defense's own table refines)."""
    from benchmark.defenses.training import AdversarialRecipe

    given = check_table(AdversarialRecipe, table, where)
    read_table(AdversarialRecipe, {**base, **given}, where)
    return dict(table)


def _defenses(table: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The ``[defenses]`` table: its own entries are every training defense's adversarial training
    recipe; a ``[defenses.<name>]`` sub-table refines it for the training defense ``name``."""
    from benchmark.defenses.registry import DEFENSES

    if not isinstance(table, dict):
        raise TableError("defenses", f"expected a table, got {type(table).__name__}")
    common = _recipe_table({k: v for k, v in table.items() if not isinstance(v, dict)}, "defenses", {})
    own = {}
    for name, recipe in table.items():
        if not isinstance(recipe, dict):
            continue
        cls = DEFENSES.get(name, None)
        if cls is None or getattr(cls, "kind", "") != DefenseKind.TRAINING:
            training = [n for n, k in DEFENSES.items() if getattr(k, "kind", "") == DefenseKind.TRAINING]
            raise TableError(f"defenses.{name}", f"not a training defense (those are: {', '.join(training)})")
        own[name] = _recipe_table(recipe, f"defenses.{name}", common)
    return common, own


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"suite manifest {path} does not exist") from None
    except IsADirectoryError:
        raise SuiteError(f"suite manifest {path} is a directory; give a suite name or a .toml file") from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise SuiteError(f"suite manifest {path} cannot be read ({type(exc).__name__}: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from None


def _resolve(name_or_path: str | Path) -> Path:
    """A standard suite's name (even where a folder of that name is in the working directory),
    or the path of a manifest file."""
    p = Path(name_or_path)
    candidate = suites_dir() / f"{name_or_path}.toml"
    if VALID_NAME.fullmatch(str(name_or_path)) and candidate.is_file():
        return candidate
    if p.suffix == ".toml" or p.is_file():
        return p
    if p.is_dir():
        raise SuiteError(f"{str(name_or_path)!r} is a directory, not a suite; known suites: "
                         f"{', '.join(list_suites())} (or give the path of a .toml manifest)")
    raise SuiteError(f"unknown suite {str(name_or_path)!r}; known: {', '.join(list_suites())} "
                     "(or give the path of a .toml manifest)")


def list_suites() -> list[str]:
    """Names of the standard suites (full ones first, then their tiny mirrors)."""
    names = sorted(p.stem for p in suites_dir().glob("*.toml"))
    return sorted(names, key=lambda n: (n.startswith("tiny-"), n))


def load_suite(name_or_path: str | Path, *, _mirrors: tuple[str, ...] = ()) -> Suite:
    """Load and validate a manifest by suite name (``tiny-nyuv2-resnet34``) or path; a value that
    breaks its table's rules is a :class:`SuiteError` naming the file and the key."""
    path = _resolve(name_or_path)
    raw = _read(path)
    try:
        return _load(path, raw, _mirrors)
    except TableError as exc:
        raise SuiteError(f"{path}: {exc}") from None


def _load(path: Path, raw: dict, _mirrors: tuple[str, ...]) -> Suite:
    if "fat" in raw:
        raise TableError("fat", "the adversarial training recipe is the [defenses] table (every training defense's, "
                                "FAT's and PGD-AT's; [defenses.<name>] refines it for one): rename [fat] to [defenses]")
    check_keys(raw, _TOP_KEYS, "")
    head = read_table(SuiteTable, raw.get("suite"), "suite")
    name, dataset, mirror = head.name, head.dataset, head.mirror
    data = head.data or (f"synthetic-{dataset}" if mirror else dataset)
    if data not in (dataset, f"synthetic-{dataset}"):
        raise TableError("suite.data", f"{data!r} does not fit dataset {dataset!r} (use {dataset!r} or "
                                       f"'synthetic-{dataset}')")
    defaults = {"backbone": head.backbone or "resnet34", "width": head.width,
                "input_size": head.input_size or (321 if dataset == "nyuv2" else 224),
                "head_hidden": head.head_hidden, "head_rates": tuple(head.head_rates),
                "output_stride": head.output_stride}
    if "models" in raw and mirror:
        raise TableError("models", "a mirror suite takes its models from the suite it mirrors; remove [[models]]")
    if mirror:
        if mirror == name or mirror in _mirrors:
            chain = " -> ".join([*_mirrors, name, mirror])
            raise TableError("suite.mirror", f"{mirror!r} mirrors back to this suite ({chain}); a mirror takes its "
                                             "models from a suite with [[models]]")
        sibling = path.parent / f"{mirror}.toml"
        parent = load_suite(sibling if sibling.exists() else mirror, _mirrors=(*_mirrors, name))
        if parent.dataset != dataset:
            raise TableError("suite.mirror", f"mirrors {mirror!r} of dataset {parent.dataset!r}, not {dataset!r}")
        if head.backbone is None:
            defaults["backbone"] = parent.backbone
        members = tuple(replace(m, repo_id="", revision="", sha256="", **defaults) for m in parent.members)
    else:
        members = _members(raw.get("models"), defaults, dataset, head.hub_org, name)
    profiles = _profiles(raw.get("profiles"))
    training = Training.from_table(raw.get("training", {}))
    names = {m.name for m in members}
    if training.warm_start is not None and training.warm_start not in names:
        raise TableError("training.warm_start", f"no model {training.warm_start!r} in the suite")
    defense_defaults, defense_recipes = _defenses(raw.get("defenses", {}))
    pins, defended_pins, detector_pins = _weights(raw.get("weights"), names,
                                                  tiny=bool(mirror) or data.startswith("synthetic-"))
    members = tuple(replace(m, sha256=pins[m.name]) if m.name in pins else m for m in members)
    for profile in profiles.values():
        for key in ("defended_models", "models", "transfer_from"):
            for m in getattr(profile, key) or ():
                if m not in names and not (key == "transfer_from" and m == "*"):
                    raise TableError(f"profiles.{profile.name}.{key}", f"no model {m!r} in the suite")
    return Suite(name=name, description=head.description, dataset=dataset, data_source=data, split=head.split,
                 backbone=defaults["backbone"], members=members, profiles=profiles, training=training,
                 defense_defaults=defense_defaults, defense_recipes=defense_recipes, mirror_of=mirror,
                 selection=head.selection, path=path, metrics=head.metrics, defended_sha256=defended_pins,
                 detector_recipe=DetectorRecipe.from_table(raw.get("detectors")), detector_sha256=detector_pins)


def _weights(table: Any, names: set[str], *, tiny: bool) -> tuple[dict[str, str], dict[str, dict], dict[str, dict]]:
    """A tiny suite's ``[weights]`` table: the sha256 of each shipped member's weights file
    (``[weights.sha256]``, member = sha256), of each shipped defended checkpoint
    (``[weights.defended."<defense>"]``, member = sha256) and of each shipped detector head
    (``[weights.detectors."<detector>"]``, member = sha256)."""
    if table is None:
        return {}, {}, {}
    if not tiny:
        raise TableError("weights", "a full suite pins each member's revision and sha256 in its [[models]] entry")
    from benchmark.defenses import canonical_defense

    def pins(entries: Any, where: str) -> dict[str, str]:
        for member, sha in check_keys(entries, names, where).items():
            if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                raise TableError(f"{where}.{member}", f"{sha!r} is not a sha256 (64 lowercase hex digits)")
        return dict(entries)

    check_keys(table, ("sha256", "defended", "detectors"), "weights")
    detectors = {}
    for name, entries in check_keys(table.get("detectors", {}), table.get("detectors", {}),
                                    "weights.detectors").items():
        from benchmark.defenses.registry import DEFENSES

        cls = DEFENSES.get(name, None)
        if cls is None or not getattr(cls, "learned", False):
            raise TableError(f"weights.detectors.{name}", "not a learned detector (one with a trained head)")
        detectors[name] = pins(entries, f"weights.detectors.{name}")
    defended = {}
    given = table.get("defended", {})
    for defense, entries in check_keys(given, given, "weights.defended").items():
        try:
            canonical = canonical_defense(defense)
        except UserError as exc:
            raise TableError(f"weights.defended.{defense}", str(exc)) from None
        if canonical != defense:
            raise TableError(f"weights.defended.{defense}", f"write the defense as {canonical!r}")
        from benchmark.defenses import create_defense
        from benchmark.defenses.training import TrainingDefense

        if not isinstance(create_defense(defense), TrainingDefense):
            raise TableError(f"weights.defended.{defense}", f"{defense} is an inference-time defense: it wraps a "
                                                            "member at evaluation time and has no weights of its own "
                                                            "to pin")
        defended[defense] = pins(entries, f"weights.defended.{defense}")
    return pins(table.get("sha256", {}), "weights.sha256"), defended, detectors


def _members(models: Any, defaults: dict, dataset: str, org: str | None, suite: str) -> tuple[Member, ...]:
    from benchmark.models.layouts import Layout as _Layout
    from benchmark.models.layouts import LayoutError, layout_from_index, layout_index

    if not isinstance(models, list) or not models:
        raise TableError("models", "a suite needs at least one [[models]] entry")
    num_tasks = _DATASETS[dataset]
    seen: set[str] = set()
    out = []
    for i, table in enumerate(models):
        where = f"models[{i}]"
        entry = read_table(MemberTable, table, where)
        try:
            layout = _Layout.parse(entry.layout, num_tasks=num_tasks, num_blocks=5)
        except LayoutError as exc:
            raise TableError(f"{where}.layout", str(exc)) from None
        if entry.index is not None:
            try:
                expected = layout_from_index(entry.index, num_tasks)
            except LayoutError as exc:
                raise TableError(f"{where}.index", str(exc)) from None
            if expected != layout:
                raise TableError(f"{where}.index", f"paper index {entry.index} is {expected}, not the layout {layout}")
        extreme = layout.is_all_shared or layout.is_independent
        index = None if extreme else layout_index(layout)  # the paper names the extremes IND and AS
        canonical = ("AS" if layout.is_all_shared else "IND") if extreme else str(layout)
        name = entry.name or (canonical if index is None else f"layout-{index}")
        if name.isdigit():
            raise TableError(f"{where}.name", f"{name!r}: a model name of digits only would read as a paper index "
                                              f"(`--models {name}` picks the model with paper index {name}); name it "
                                              f"e.g. 'layout-{name}'")
        if name in seen:
            raise TableError(f"{where}.name", f"duplicate model name {name!r}")
        seen.add(name)
        if bool(entry.revision) != bool(entry.sha256):
            raise TableError(f"{where}.revision" if not entry.revision else f"{where}.sha256",
                             "revision and sha256 are published together: give both or neither")
        overrides = {k: getattr(entry, k) for k in ("backbone", "width", "input_size", "head_hidden", "head_rates")
                     if getattr(entry, k) is not None}
        if "head_rates" in overrides:
            overrides["head_rates"] = tuple(overrides["head_rates"])
        repo_id = entry.repo_id if entry.repo_id is not None else (f"{org}/{suite}-{name}" if org else "")
        out.append(Member(name=name, layout=canonical, index=index, repo_id=repo_id, revision=entry.revision,
                          sha256=entry.sha256, **{**defaults, **overrides}))
    return tuple(out)


def _profiles(profiles: Any) -> dict[str, Profile]:
    if not isinstance(profiles, dict) or not profiles:
        raise TableError("profiles", "a suite needs at least one [profiles.NAME] table (e.g. quick, paper)")
    return {name: read_table(Profile, table, f"profiles.{name}", name=name) for name, table in profiles.items()}
