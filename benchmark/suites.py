"""Suite manifests: ``suites/*.toml``, loaded and validated at the edge.

A suite fixes a data set and its tasks, a backbone, the member models (layout, paper index, Hub
repo id, pinned revision, sha256 of the weights), the evaluation split, and named *profiles*
(``quick`` for demos and CI, ``paper`` for the paper's protocol): the eps grid, the attacks, their
step budgets, the number of evaluation images and the seeds.

A *tiny mirror* (``mirror = "nyuv2-resnet34"``) takes its members' layouts from the full suite
and overrides the backbone size and resolution; its weights are built locally on first use.

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
from benchmark.schema import TableError, check_table, read_table, setting

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
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
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


@dataclass(frozen=True)
class Profile:
    """How a suite is evaluated: eps grid (0-255 units), attacks (patterns such as ``pgd:*``),
    steps per optimizer, evaluation images, seeds and batch size."""

    name: str
    eps: tuple[float, ...]
    attacks: tuple[str, ...]
    steps: dict[str, int]
    eval_size: int | None  # None: the whole split
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 8
    description: str = ""
    cell_timeout: float = 1800.0  # seconds one cell may take before it is stored as failed (0: no limit)
    defenses: tuple[str, ...] = ("none",)  # targets per member: undefended, inference-time and FAT defenses
    eot_samples: int = 4  # EOT draws per model call when attacking a randomised defense
    #: draws of a randomised defense over which its clean and adversarial images are scored (the
    #: metrics pooled over the draws: what a user of the deployed defense sees on average)
    score_draws: int = 8
    defended_models: tuple[str, ...] | None = None  # members that get the defended targets (None: all)
    models: tuple[str, ...] | None = None  # the members the profile evaluates (None: all)
    #: extra step budgets per optimizer (``{"pgd": (1, 2, 10)}``) for the ARP-at-equal-compute curves,
    #: run on ``budget_models`` (None: every member) besides the ``steps`` of the protocol
    budgets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    budget_models: tuple[str, ...] | None = None
    #: each optimizer's preset and options (``{"apgd": {"preset": "paper", "random_start": False}}``),
    #: applied to every attack of that optimizer and stored in its cells' configuration
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: attacks run only on the members that get defenses (each of their targets, the undefended
    #: one included): the black-box attack of the gradient-masking checks
    defense_attacks: tuple[str, ...] = ()


def _pinned(pattern: re.Pattern, what: str) -> Callable[[str], str | None]:
    return lambda value: None if not value or pattern.fullmatch(value) else f"{value!r} is not {what}"


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
    file: str = setting("model.safetensors")


@dataclass(frozen=True)
class Training:
    """How a suite's members are trained: the manifest's ``[training]`` table, every entry checked
    by its field's rule. ``table`` keeps the entries as written: they identify the recipe
    (:attr:`Suite.training_id`), so a default spelled out or left out is the same recipe only when
    it is the same text."""

    steps: int = setting(300, low=1, high=10_000_000)
    batch_size: int = setting(16, low=1, high=65_536)
    lr: float = setting(2e-3, low=1e-12, high=10)
    weight_decay: float = setting(1e-4, low=0, high=10)
    optimizer: str = setting("adam", choices=("adam", "sgd"))
    schedule: str = setting("cosine", choices=("cosine", "constant"))
    seed: int = setting(0, low=0, high=2**62)
    train_size: int = setting(512, low=1, high=MAX_EVAL_SIZE)  # synthetic scenes members train on
    warm_start: str | None = setting(None)  # the member every other one is fine-tuned from
    finetune_steps: int | None = setting(None, low=0, high=10_000_000)
    finetune_lr: float | None = setting(None, low=1e-12, high=10)
    init: str = setting("scratch", choices=("scratch", "pretext", "imagenet"))
    pretext: dict | None = setting(None, nested=PretextRecipe)
    imagenet: dict | None = setting(None, nested=ImagenetTable)
    #: the precision the weights are stored (and shipped) in
    weights_dtype: str = setting("float32", choices=("float32", "float16", "bfloat16"))
    checkpoint_every: int | None = setting(None, low=1, high=10_000_000)  # steps between resume files
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
    #: the adversarial training recipe (``[fat]``): FAT's, and every training defense's defaults
    fat: dict[str, Any] = field(default_factory=dict)
    #: a training defense's own recipe over ``fat`` (``[defenses.<name>]``, e.g. ``[defenses.pgdat]``)
    defense_recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    mirror_of: str | None = None
    selection: str = ""
    path: Path | None = None
    #: a tiny suite's shipped defended checkpoints: defense spec -> member -> sha256 of its weights
    defended_sha256: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics: str = "ours"  # metric mode: "ours" (pooled) or "paper" (the authors' code; benchmark.paper_metrics)

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
        text = json.dumps({"training": self.training.table, "data": self.data_source, "version": TRAINING_VERSION},
                          sort_keys=True)
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
                            "(directory format in the README)")
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

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise UserError(f"suite {self.name!r} has no profile {name!r}; profiles: {', '.join(self.profiles)}")
        return self.profiles[name]

    def unpublished(self) -> list[Member]:
        """Members of a full suite whose weights are not on the Hub yet."""
        return [] if self.tiny else [m for m in self.members if not m.published]


# ---------------------------------------------------------------------- loading
_SUITE_KEYS = {"name", "description", "dataset", "data", "split", "backbone", "width", "input_size",
               "head_hidden", "head_rates", "output_stride", "mirror", "selection", "hub_org", "metrics"}
_MEMBER_KEYS = {"name", "index", "layout", "backbone", "width", "input_size", "repo_id", "revision", "sha256",
                "head_hidden", "head_rates"}
_PROFILE_KEYS = {"eps", "attacks", "steps", "eval_size", "seeds", "batch_size", "description", "cell_timeout",
                 "defenses", "eot_samples", "defended_models", "models", "budgets", "budget_models", "options",
                 "score_draws", "defense_attacks"}
_TOP_KEYS = {"suite", "models", "profiles", "training", "fat", "defenses", "weights"}
_MEMBER_OVERRIDES = {"backbone": str, "width": (int, float), "input_size": int, "head_hidden": int}
_DATASETS = {"nyuv2": 3, "taskonomy": 5}


def _table(path: Path, read: Callable[..., Any], *args: Any) -> Any:
    """``read(*args)`` with a rule broken named as a manifest error (the file and the key)."""
    try:
        return read(*args)
    except TableError as exc:
        raise SuiteError(f"{path}: {exc}") from None


def _recipe_table(c: _Checker, table: Any, where: str, base: dict[str, Any]) -> dict[str, Any]:
    """An adversarial training recipe table, its keys and values checked by the recipe class's
    rules (over ``base``: the ``[fat]`` table a defense's own table refines)."""
    from benchmark.defenses.training import AdversarialRecipe

    given = _table(c.path, check_table, AdversarialRecipe, table, where)
    _table(c.path, read_table, AdversarialRecipe, {**base, **given}, where)
    return dict(table)


def _defense_recipes(c: _Checker, table: Any, fat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``[defenses.<name>]``: the recipe of the training defense ``name`` over ``[fat]``."""
    from benchmark.defenses.registry import DEFENSES

    if not isinstance(table, dict):
        raise c.fail("defenses", f"expected a table, got {type(table).__name__}")
    out = {}
    for name, recipe in table.items():
        cls = DEFENSES.get(name, None)
        if cls is None or getattr(cls, "kind", "") != DefenseKind.TRAINING:
            training = [n for n, k in DEFENSES.items() if getattr(k, "kind", "") == DefenseKind.TRAINING]
            raise c.fail(f"defenses.{name}", f"not a training defense (those are: {', '.join(training)})")
        out[name] = _recipe_table(c, recipe, f"defenses.{name}", fat)
    return out


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> SuiteError:
        return SuiteError(f"{self.path}: {key}: {message}")

    def keys(self, table: Any, allowed: set[str], where: str) -> dict:
        if not isinstance(table, dict):
            raise self.fail(where, f"expected a table, got {type(table).__name__}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return table

    def typed(self, table: dict, key: str, types, where: str, default: Any = ..., *,
              low: float | None = None, high: float | None = None) -> Any:
        """``table[key]`` checked to be of ``types`` (and, for a number, in [low, high])."""
        if key not in table:
            if default is ...:
                raise self.fail(f"{where}.{key}", "missing")
            return default
        value = table[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(f"{where}.{key}", f"expected {_type_names(types)}, got {value!r}")
        if not isinstance(value, types):
            raise self.fail(f"{where}.{key}", f"expected {_type_names(types)}, got {value!r}")
        if isinstance(value, int | float) and ((low is not None and not value >= low)
                                               or (high is not None and not value <= high)):
            raise self.fail(f"{where}.{key}", f"expected {_type_names(types)} in [{low:g}, "
                                              f"{'any' if high is None else format(high, 'g')}], got {value!r}")
        return value


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    if set(types) == {int, float}:
        return "a number"
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "list": "a list",
                        "dict": "a table", "bool": "true/false"}.get(t.__name__, t.__name__) for t in types)


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
    """Load and validate a manifest by suite name (``tiny-nyuv2-resnet34``) or path."""
    path = _resolve(name_or_path)
    raw = _read(path)
    c = _Checker(path)
    c.keys(raw, _TOP_KEYS, "")
    head = c.keys(raw.get("suite"), _SUITE_KEYS, "suite")
    name = c.typed(head, "name", str, "suite")
    if not VALID_NAME.fullmatch(name):
        raise c.fail("suite.name", f"{name!r} is not a valid name (letters, digits, '.', '_', '-')")
    dataset = c.typed(head, "dataset", str, "suite")
    if dataset not in _DATASETS:
        raise c.fail("suite.dataset", f"unknown dataset {dataset!r}; use {' or '.join(_DATASETS)}")
    mirror = c.typed(head, "mirror", str, "suite", None)
    metrics = c.typed(head, "metrics", str, "suite", "ours")
    if metrics not in ("ours", "paper"):
        raise c.fail("suite.metrics", f"expected 'ours' (pooled metrics) or 'paper' (the authors' code), "
                                      f"got {metrics!r}")
    if mirror is not None and not VALID_NAME.fullmatch(mirror):
        raise c.fail("suite.mirror", f"{mirror!r} is not a suite name (letters, digits, '.', '_', '-'; the "
                                     "mirrored manifest is looked up beside this one or among the standard suites)")
    data = c.typed(head, "data", str, "suite", f"synthetic-{dataset}" if mirror else dataset)
    if data not in (dataset, f"synthetic-{dataset}"):
        raise c.fail("suite.data", f"{data!r} does not fit dataset {dataset!r} (use {dataset!r} or "
                                   f"'synthetic-{dataset}')")
    defaults = {
        "backbone": c.typed(head, "backbone", str, "suite", "resnet34"),
        "width": float(c.typed(head, "width", (int, float), "suite", 1.0, low=0.01, high=8)),
        "input_size": c.typed(head, "input_size", int, "suite", 321 if dataset == "nyuv2" else 224, low=8, high=2048),
        "head_hidden": c.typed(head, "head_hidden", int, "suite", None, low=1, high=4096),
        "head_rates": tuple(c.typed(head, "head_rates", list, "suite", [6, 12, 18, 24])),
        "output_stride": c.typed(head, "output_stride", int, "suite", None),
    }
    if defaults["output_stride"] not in (None, *OUTPUT_STRIDES):
        raise c.fail("suite.output_stride", f"expected one of {', '.join(map(str, OUTPUT_STRIDES))} (the backbones' "
                                            f"strides), got {defaults['output_stride']!r}")
    from benchmark.models.backbones import list_backbones

    if defaults["backbone"] not in list_backbones():
        raise c.fail("suite.backbone", f"unknown backbone {defaults['backbone']!r}; known: "
                                       f"{', '.join(list_backbones())}")
    if "models" in raw and mirror:
        raise c.fail("models", "a mirror suite takes its models from the suite it mirrors; remove [[models]]")
    if mirror:
        if mirror == name or mirror in _mirrors:
            chain = " -> ".join([*_mirrors, name, mirror])
            raise c.fail("suite.mirror", f"{mirror!r} mirrors back to this suite ({chain}); a mirror takes its "
                                         "models from a suite with [[models]]")
        sibling = path.parent / f"{mirror}.toml"
        parent = load_suite(sibling if sibling.exists() else mirror, _mirrors=(*_mirrors, name))
        if parent.dataset != dataset:
            raise c.fail("suite.mirror", f"mirrors {mirror!r} of dataset {parent.dataset!r}, not {dataset!r}")
        if "backbone" not in head:
            defaults["backbone"] = parent.backbone
        members = tuple(replace(m, repo_id="", revision="", sha256="", **defaults) for m in parent.members)
    else:
        members = _members(c, raw.get("models"), defaults, dataset, head.get("hub_org"), name)
    profiles = _profiles(c, raw.get("profiles"))
    training = _table(path, Training.from_table, raw.get("training", {}))
    if training.warm_start is not None and training.warm_start not in {m.name for m in members}:
        raise c.fail("training.warm_start", f"no model {training.warm_start!r} in the suite")
    fat = _recipe_table(c, raw.get("fat", {}), "fat", {})
    defense_recipes = _defense_recipes(c, raw.get("defenses", {}), fat)
    names = {m.name for m in members}
    pins, defended_pins = _weights(c, raw.get("weights"), names, tiny=bool(mirror) or data.startswith("synthetic-"))
    members = tuple(replace(m, sha256=pins[m.name]) if m.name in pins else m for m in members)
    for profile in profiles.values():
        for key in ("defended_models", "models"):
            for m in getattr(profile, key) or ():
                if m not in names:
                    raise c.fail(f"profiles.{profile.name}.{key}", f"no model {m!r} in the suite")
    return Suite(name=name, description=c.typed(head, "description", str, "suite", ""), dataset=dataset,
                 data_source=data,
                 split=c.typed(head, "split", str, "suite", "test"), backbone=defaults["backbone"],
                 members=members, profiles=profiles, training=training, fat=dict(fat),
                 defense_recipes=defense_recipes, mirror_of=mirror,
                 selection=c.typed(head, "selection", str, "suite", ""), path=path, metrics=metrics,
                 defended_sha256=defended_pins)


def _weights(c: _Checker, table: Any, names: set[str], *, tiny: bool) -> tuple[dict[str, str], dict[str, dict]]:
    """A tiny suite's ``[weights]`` table: the sha256 of each shipped member's weights file
    (``[weights.sha256]``, member = sha256) and of each shipped defended checkpoint
    (``[weights.defended."<defense>"]``, member = sha256)."""
    if table is None:
        return {}, {}
    if not tiny:
        raise c.fail("weights", "a full suite pins each member's revision and sha256 in its [[models]] entry")
    from benchmark.defenses import canonical_defense

    c.keys(table, {"sha256", "defended"}, "weights")

    def pins(entries: Any, where: str) -> dict[str, str]:
        c.keys(entries, names, where)
        for member, sha in entries.items():
            if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                raise c.fail(f"{where}.{member}", f"{sha!r} is not a sha256 (64 lowercase hex digits)")
        return dict(entries)

    defended = {}
    for spec, entries in c.typed(table, "defended", dict, "weights", {}).items():
        try:
            canonical = canonical_defense(spec)
        except UserError as exc:
            raise c.fail(f"weights.defended.{spec}", str(exc)) from None
        if canonical != spec:
            raise c.fail(f"weights.defended.{spec}", f"write the defense as {canonical!r}")
        defended[spec] = pins(entries, f"weights.defended.{spec}")
    return pins(c.typed(table, "sha256", dict, "weights", {}), "weights.sha256"), defended


def _members(c: _Checker, models: Any, defaults: dict, dataset: str, org: str | None, suite: str) -> tuple[Member, ...]:
    from benchmark.models.layouts import Layout as _Layout
    from benchmark.models.layouts import LayoutError, layout_from_index, layout_index

    if not isinstance(models, list) or not models:
        raise c.fail("models", "a suite needs at least one [[models]] entry")
    num_tasks = _DATASETS[dataset]
    seen: set[str] = set()
    out = []
    for i, entry in enumerate(models):
        where = f"models[{i}]"
        c.keys(entry, _MEMBER_KEYS, where)
        layout_text = c.typed(entry, "layout", str, where)
        try:
            layout = _Layout.parse(layout_text, num_tasks=num_tasks, num_blocks=5)
        except LayoutError as exc:
            raise c.fail(f"{where}.layout", str(exc)) from None
        index = c.typed(entry, "index", int, where, None)
        if index is not None:
            try:
                expected = layout_from_index(index, num_tasks)
            except LayoutError as exc:
                raise c.fail(f"{where}.index", str(exc)) from None
            if expected != layout:
                raise c.fail(f"{where}.index", f"paper index {index} is {expected}, not the layout {layout}")
        extreme = layout.is_all_shared or layout.is_independent
        index = None if extreme else layout_index(layout)  # the paper names the extremes IND and AS
        canonical = ("AS" if layout.is_all_shared else "IND") if extreme else str(layout)
        name = c.typed(entry, "name", str, where, canonical if index is None else f"layout-{index}")
        if not VALID_NAME.fullmatch(name):
            raise c.fail(f"{where}.name", f"{name!r} is not a valid name")
        if name.isdigit():
            raise c.fail(f"{where}.name", f"{name!r}: a model name of digits only would read as a paper index "
                                          f"(`--models {name}` picks the model with paper index {name}); name it e.g. "
                                          f"'layout-{name}'")
        if name in seen:
            raise c.fail(f"{where}.name", f"duplicate model name {name!r}")
        seen.add(name)
        revision = c.typed(entry, "revision", str, where, "")
        if revision and not _REVISION.fullmatch(revision):
            raise c.fail(f"{where}.revision", f"{revision!r} is not a pinned commit (40 lowercase hex digits); "
                                              "branch and tag names move, so they are not accepted")
        sha = c.typed(entry, "sha256", str, where, "")
        if sha and not _SHA256.fullmatch(sha):
            raise c.fail(f"{where}.sha256", f"{sha!r} is not a sha256 (64 lowercase hex digits)")
        if bool(revision) != bool(sha):
            raise c.fail(f"{where}.revision" if not revision else f"{where}.sha256",
                         "revision and sha256 are published together: give both or neither")
        repo_id = c.typed(entry, "repo_id", str, where, f"{org}/{suite}-{name}" if org else "")
        if repo_id and not REPO_ID.fullmatch(repo_id):
            raise c.fail(f"{where}.repo_id", f"{repo_id!r} is not a Hub repo id ('owner/name')")
        values = dict(defaults)
        for key, types in _MEMBER_OVERRIDES.items():
            if key in entry:
                values[key] = c.typed(entry, key, types, where)
        from benchmark.models.backbones import list_backbones

        if values["backbone"] not in list_backbones():
            raise c.fail(f"{where}.backbone", f"unknown backbone {values['backbone']!r}; known: "
                                              f"{', '.join(list_backbones())}")
        values["width"] = float(values["width"])
        out.append(Member(name=name, layout=canonical, index=index, repo_id=repo_id, revision=revision,
                          sha256=sha, **values))
    return tuple(out)


def _profiles(c: _Checker, profiles: Any) -> dict[str, Profile]:
    from benchmark.attacks import create_attack, list_attacks
    from benchmark.defenses import canonical_defense

    if not isinstance(profiles, dict) or not profiles:
        raise c.fail("profiles", "a suite needs at least one [profiles.NAME] table (e.g. quick, paper)")
    out = {}
    known = list_attacks()
    for pname, table in profiles.items():
        where = f"profiles.{pname}"
        c.keys(table, _PROFILE_KEYS, where)
        eps = c.typed(table, "eps", list, where)
        if not eps or not all(isinstance(e, int | float) and not isinstance(e, bool) and 0 < e <= 255 for e in eps):
            raise c.fail(f"{where}.eps", f"expected a list of numbers in (0, 255] (0-255 pixel units), got {eps!r}")
        attacks = c.typed(table, "attacks", list, where)
        for pattern in attacks:
            if not isinstance(pattern, str) or not any(fnmatch.fnmatch(a, pattern) for a in known):
                raise c.fail(f"{where}.attacks", f"{pattern!r} matches no registered attack "
                                                 "(see `mtlbench attacks list`)")
        steps = c.typed(table, "steps", dict, where, {})
        for key, value in steps.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise c.fail(f"{where}.steps.{key}", f"expected a positive integer, got {value!r}")
        eval_size = c.typed(table, "eval_size", int, where, None, low=1, high=MAX_EVAL_SIZE)
        seeds = c.typed(table, "seeds", list, where, [0])
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise c.fail(f"{where}.seeds", f"expected a list of integers, got {seeds!r}")
        timeout = c.typed(table, "cell_timeout", (int, float), where, 1800)
        if not 0 <= timeout <= MAX_CELL_TIMEOUT:
            raise c.fail(f"{where}.cell_timeout",
                         f"expected seconds in [0, {MAX_CELL_TIMEOUT}] (0: no limit), got {timeout!r}")
        defenses = c.typed(table, "defenses", list, where, ["none"])
        for d in defenses:
            if not isinstance(d, str):
                raise c.fail(f"{where}.defenses", f"expected defense names such as 'bitdepth:4', got {d!r}")
            try:
                canonical_defense(d)
            except UserError as exc:
                raise c.fail(f"{where}.defenses", str(exc)) from None
        defended = c.typed(table, "defended_models", list, where, None)
        if defended is not None and not all(isinstance(m, str) for m in defended):
            raise c.fail(f"{where}.defended_models", f"expected a list of model names, got {defended!r}")
        chosen = c.typed(table, "models", list, where, None)
        if chosen is not None and (not chosen or not all(isinstance(m, str) for m in chosen)):
            raise c.fail(f"{where}.models", f"expected a non-empty list of model names, got {chosen!r}")
        eot = c.typed(table, "eot_samples", int, where, 4)
        if not 1 <= eot <= 1000:
            raise c.fail(f"{where}.eot_samples", f"expected an integer in [1, 1000], got {eot!r}")
        draws = c.typed(table, "score_draws", int, where, 8, low=1, high=1000)
        extra = c.typed(table, "defense_attacks", list, where, [])
        for pattern in extra:
            if not isinstance(pattern, str) or not any(fnmatch.fnmatch(a, pattern) for a in known):
                raise c.fail(f"{where}.defense_attacks", f"{pattern!r} matches no registered attack")
        budgets = c.typed(table, "budgets", dict, where, {})
        for key, values in budgets.items():
            if (not isinstance(values, list) or not values
                    or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100_000 for v in values)):
                raise c.fail(f"{where}.budgets.{key}", f"expected a list of step counts in [1, 100000], got {values!r}")
        options = c.typed(table, "options", dict, where, {})
        for key, values in options.items():
            scalars = isinstance(values, dict) and all(isinstance(v, str | int | float | bool) for v in values.values())
            if not scalars:
                raise c.fail(f"{where}.options.{key}", "expected a table of option = value (string, number or "
                                                        f"boolean), got {values!r}")
            try:  # the attack exists and takes these options
                create_attack(next(a for a in known if a == key or a.startswith(f"{key}:")), **values)
            except StopIteration:
                raise c.fail(f"{where}.options.{key}", f"{key!r} is not a registered attack") from None
            except UserError as exc:
                raise c.fail(f"{where}.options.{key}", str(exc)) from None
        budget_models = c.typed(table, "budget_models", list, where, None)
        if budget_models is not None and not all(isinstance(m, str) for m in budget_models):
            raise c.fail(f"{where}.budget_models", f"expected a list of model names, got {budget_models!r}")
        out[pname] = Profile(name=pname, eps=tuple(float(e) for e in eps), attacks=tuple(attacks),
                             steps=dict(steps), eval_size=eval_size, seeds=tuple(seeds),
                             batch_size=c.typed(table, "batch_size", int, where, 8, low=1, high=4096),
                             description=c.typed(table, "description", str, where, ""),
                             cell_timeout=float(timeout), defenses=tuple(defenses), eot_samples=eot,
                             score_draws=draws, defense_attacks=tuple(extra),
                             defended_models=None if defended is None else tuple(defended),
                             models=None if chosen is None else tuple(chosen),
                             budgets={k: tuple(dict.fromkeys(v)) for k, v in budgets.items()},
                             budget_models=None if budget_models is None else tuple(budget_models),
                             options={k: dict(v) for k, v in options.items()})
    return out
