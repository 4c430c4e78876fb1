"""Where a model's weights are on this machine, for every kind of target, and loading them.

One :class:`Location` answers "where, from what, and which sha256 must it have" for

* a suite member (:func:`locate_member`): ``--weights-dir DIR`` (``DIR/<member>/`` or
  ``DIR/<suite>/<member>/``), the weights that ship with mtlbench (a standard tiny suite, the
  sha256 pinned in the manifest's ``[weights]``), the local zoo ``$MTLBENCH_HOME/zoo/<suite>/<member>/``,
  or a full suite's Hub repo at the pinned revision (through huggingface_hub's cache;
  ``HF_HUB_OFFLINE=1`` or ``local_files_only`` never touches the network);
* a member under a training defense (:func:`locate_defended`): ``DIR/defended/<defense>/<member>/``,
  shipped with mtlbench, or ``$MTLBENCH_HOME/zoo/<suite>/defended/<defense>/<member>/``;
* an external checkpoint directory (:func:`locate_external`).

:func:`load_location` loads any of them, checking the pin. Building what is missing (a tiny
member, a tiny member's defended checkpoint) is the zoo's (:mod:`benchmark.zoo.build`,
:mod:`benchmark.zoo.defend`); :func:`benchmark.targets.resolve` puts the two together for any target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.defenses import create_defense
from benchmark.defenses.training import TrainingDefense
from benchmark.enums import Origin
from benchmark.errors import UserError
from benchmark.models.branched import BranchedModel
from benchmark.paths import defended_root, safe_name
from benchmark.suites import Member, Suite
from benchmark.zoo.checkpoint import (
    CONFIG_FILE,
    REDOWNLOAD,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointInfo,
    file_sha256,
    load_checkpoint,
    read_config,
)
from benchmark.zoo.hub import MissingWeightsError, download_member, hub_offline, local_checkpoint_dir, shipped_dir

__all__ = ["Location", "check_defended", "defended_dir", "expected_config", "find_defended", "find_member", "is_built",
           "is_current",
           "load_location", "locate_defended", "locate_external", "locate_member", "parent_sha256",
           "shipped_defended_dir", "shipped_set_aside", "shipped_weights", "training_defense"]

@dataclass(frozen=True)
class Location:
    """Where a model's checkpoint is (``directory``; None when it is not on this machine yet) and
    what it must be: ``sha256`` pins the weights file ("" for the user's own, or a local build),
    ``expect`` the model config fields a suite's manifest requires; ``remedy`` says what to do when
    the pinned file does not match."""

    directory: Path | None
    origin: Origin
    sha256: str = ""
    expect: dict | None = None
    remedy: str = REDOWNLOAD

    @property
    def found(self) -> bool:
        return self.directory is not None


def load_location(location: Location, device: str | torch.device = "cpu") -> tuple[BranchedModel, CheckpointInfo]:
    """The model at ``location`` (in eval mode) and its info, its sha256 and config checked."""
    if location.directory is None:
        raise MissingWeightsError(f"no checkpoint to load ({location.origin} weights are not on this machine)")
    model, info = load_checkpoint(location.directory, sha256=location.sha256, expect=location.expect, device=device,
                                  remedy=location.remedy)
    info.origin = location.origin
    return model, info


def expected_config(member: Member, suite: Suite | None = None) -> dict:
    """The ModelConfig fields a member's checkpoint must have (its tasks and their channels too,
    given the suite)."""
    exp = {"layout": member.layout, "backbone": member.backbone, "width": member.width,
           "head_rates": list(member.head_rates)}
    if suite is not None:
        exp["tasks"] = {t.name: t.channels for t in suite.tasks}
    for key in ("head_hidden", "output_stride"):
        if getattr(member, key) is not None:
            exp[key] = getattr(member, key)
    return exp


# -- suite members -----------------------------------------------------------------------------

def shipped_weights(suite: Suite, member: Member) -> Path | None:
    """The shipped checkpoint of ``member`` when the manifest pins it (``[weights.sha256]``) and it
    was trained with the manifest's recipe (an edited ``[training]`` makes the suite build locally).
    A shipped checkpoint with a file missing is an error that names it (never a silent rebuild)."""
    if not suite.tiny:
        return None
    directory = shipped_dir(suite, member)
    present = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if (directory / f).exists()]
    if present and len(present) < 2 and member.sha256:
        missing = next(f for f in (WEIGHTS_FILE, CONFIG_FILE) if f not in present)
        raise CheckpointError(f"{directory / missing} is missing from the weights of {suite.name}/{member.name} that "
                              f"ship with mtlbench: reinstall mtlbench (in a checkout: `git checkout -- {directory}`)")
    if not member.sha256:
        return None
    return directory if is_current(suite, directory) else None


def shipped_set_aside(suite: Suite, member: Member) -> str:
    """Why a checkpoint of ``member`` that ships with mtlbench is not used (empty when none ships,
    or it is used): the manifest pins no sha256 for it, or it was trained with another recipe than
    the manifest's. Said before a member is built instead."""
    if not suite.tiny or not (shipped_dir(suite, member) / WEIGHTS_FILE).exists():
        return ""
    directory = shipped_dir(suite, member)
    if not member.sha256:
        return (f"the manifest {suite.path or suite.name} pins no sha256 for {member.name} in its [weights] table, "
                "so the shipped file cannot be checked")
    if _is_stale(suite, directory):
        recorded = read_config(directory).training.get("recipe_id")
        return (f"it was trained with another recipe (id {recorded}) than the manifest's [training] (id "
                f"{suite.training_id})")
    return ""


def is_current(suite: Suite, directory: Path) -> bool:
    """Whether ``directory`` holds a member's checkpoint of ``suite``'s recipe: one is there and,
    for a tiny suite, it was not trained with another recipe (an older mtlbench, an edited
    ``[training]``; such a member is rebuilt rather than silently used)."""
    return (directory / CONFIG_FILE).exists() and not (suite.tiny and _is_stale(suite, directory))


def _is_stale(suite: Suite, directory: Path) -> bool:
    """Whether the checkpoint in ``directory`` records another recipe id than the suite's."""
    try:
        recorded = read_config(directory).training.get("recipe_id")
    except CheckpointError:
        return False  # damaged: loading it says what is wrong
    return recorded != suite.training_id


def _how_to_get(suite: Suite, member: Member) -> str:
    return (f"get them by one of: `mtlbench zoo train {suite.name} --model {member.name} --data-root DIR` "
            f"(train it), `mtlbench zoo import {suite.name} WEIGHTROOT` (convert the paper authors' "
            f"checkpoints), or `--weights-dir DIR` with a local checkpoint directory DIR/{member.name}/")


def _in_weights_dir(weights_dir: Path, suite: Suite, member: Member) -> Path | None:
    for candidate in (weights_dir / member.name, weights_dir / suite.name / member.name):
        if (candidate / CONFIG_FILE).exists():
            return candidate
    return None


def locate_member(suite: Suite, member: Member, *, weights_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, local_files_only: bool | None = None) -> Location:
    """Where ``member``'s checkpoint is, downloading it from the Hub when needed (not with
    ``local_files_only``). Not found (``directory`` None) only for a tiny member that is neither
    shipped nor built yet (it is built on first use); a full member that is nowhere is an error
    that says how to get it."""
    expect = expected_config(member, suite)
    if weights_dir is not None:
        wd = Path(weights_dir)
        if not wd.is_dir():
            raise MissingWeightsError(f"--weights-dir {wd} does not exist")
        found = _in_weights_dir(wd, suite, member)
        if found is not None:
            return Location(found, Origin.WEIGHTS_DIR, expect=expect)
    shipped = shipped_weights(suite, member)
    if shipped is not None:
        return Location(shipped, Origin.SHIPPED, member.sha256, expect,
                        f"either the file was changed (it ships with mtlbench: reinstall mtlbench; in a checkout: "
                        f"`git checkout -- {shipped}`) or the pin was (the manifest {suite.path or suite.name}, "
                        f"[weights] {member.name} = \"{member.sha256}\")")
    local = local_checkpoint_dir(suite, member)
    if is_current(suite, local):
        # the pinned hash identifies the published weights: a full suite's copy in the local zoo
        # must be them (it would otherwise silently stand in for them); a tiny suite's local build
        # is its own model, as --weights-dir is the user's
        return Location(local, Origin.LOCAL, "" if suite.tiny else member.sha256, expect)
    if suite.tiny:
        return Location(None, Origin.LOCAL, expect=expect)  # not built yet, or with another recipe
    if not member.published:
        where = f" (looked in {weights_dir} and {local})" if weights_dir else f" (looked in {local})"
        raise MissingWeightsError(f"{suite.name}/{member.name}: no published weights yet: the manifest has no "
                                  f"pinned revision for {member.repo_id or 'its Hub repo'}{where}; "
                                  f"{_how_to_get(suite, member)}")
    path = download_member(suite, member, cache_dir=cache_dir, remedy=_how_to_get(suite, member),
                           local_files_only=hub_offline() if local_files_only is None else local_files_only)
    return Location(path, Origin.HUB, member.sha256, expect)


def is_built(suite: Suite, member: Member, *, weights_dir: str | Path | None = None) -> bool:
    """Whether ``member``'s weights are on this machine (in ``weights_dir``, shipped, the local zoo,
    or the Hugging Face cache at the pinned revision), so loading it neither trains nor downloads."""
    try:
        return locate_member(suite, member, weights_dir=weights_dir, local_files_only=True).found
    except UserError:
        return False


def parent_sha256(suite: Suite, member: Member, *, weights_dir: str | Path | None = None) -> str | None:
    """The sha256 of ``member``'s weights file on this machine (None when it is not there)."""
    try:
        location = locate_member(suite, member, weights_dir=weights_dir, local_files_only=True)
    except UserError:
        return None
    if not location.found:
        return None
    return location.sha256 if location.origin == Origin.HUB and location.sha256 else \
        file_sha256(location.directory / WEIGHTS_FILE)


# -- members under a training defense ----------------------------------------------------------

def training_defense(defense_name: str) -> TrainingDefense:
    """The training defense ``defense_name`` names; an inference-time one is a message."""
    defense = create_defense(defense_name)
    if not isinstance(defense, TrainingDefense):
        raise UserError(f"{defense.canonical_name!r} is an inference-time defense: it wraps a model at evaluation time "
                        f"(`mtlbench run --defenses {defense.canonical_name}`); `mtlbench defend` trains training "
                        "defenses such as fat:pgd:gb-mta or pgdat:pgd:total")
    return defense


def defended_dir(suite: Suite, member: Member, defense_name: str) -> Path:
    """Where ``mtlbench defend`` writes ``member`` trained with the defense ``defense_name``."""
    return defended_root(suite.name, defense_name) / member.name


def shipped_defended_dir(suite: Suite, defense_name: str) -> Path:
    """Where a tiny suite's checkpoints under the training defense ``defense_name`` ship with mtlbench
    (``<dir>/<member>/``)."""
    return defended_root(suite.name, defense_name, shipped=True)


def _shipped_defended(suite: Suite, member: Member, defense_name: str) -> Path | None:
    """The checkpoint of ``member`` under ``defense_name`` that ships with mtlbench, when the manifest
    pins it (``[weights.defended."<defense_name>"]``) and it was trained with the manifest's recipe from
    the member's current weights."""
    if not suite.defended_sha256.get(defense_name, {}).get(member.name):
        return None
    directory = shipped_defended_dir(suite, defense_name) / member.name
    present = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if (directory / f).exists()]
    if len(present) == 1:
        missing = next(f for f in (WEIGHTS_FILE, CONFIG_FILE) if f not in present)
        raise CheckpointError(f"{directory / missing} is missing from the {defense_name} checkpoint of "
                              f"{suite.name}/{member.name} that ships with mtlbench: reinstall mtlbench (in a "
                              f"checkout: `git checkout -- {directory}`)")
    if not present or _is_stale_defended(directory, suite, member):
        return None
    try:
        recorded = read_config(directory).defense.get("recipe")
    except CheckpointError:
        return directory  # damaged: loading it says what is wrong
    return directory if recorded == training_defense(defense_name).recipe(suite).to_dict() else None


def _is_stale_defended(directory: Path, suite: Suite, member: Member) -> bool:
    """Whether a tiny member's defended checkpoint was trained from other weights than the
    member's current local ones (or the member is not built, or was built with another recipe, so
    that it will be rebuilt): then it is trained again rather than refused."""
    if not suite.tiny:
        return False
    try:
        recorded = read_config(directory).defense.get("parent_sha256")
    except CheckpointError:
        return False  # damaged: loading it says what is wrong
    return recorded != parent_sha256(suite, member)


def locate_defended(suite: Suite, member: Member, defense_name: str, *,
                    weights_dir: str | Path | None = None) -> Location:
    """Where the finished checkpoint of ``member`` under the training defense ``defense_name`` is (in
    ``weights_dir``, shipped with mtlbench, or in the local zoo); not found when it is in none (a
    tiny member's stale one in the local zoo is trained again)."""
    expect = expected_config(member, suite)
    if weights_dir is not None:
        mine = Path(weights_dir) / "defended" / safe_name(defense_name) / member.name
        if (mine / CONFIG_FILE).exists():
            return Location(mine, Origin.DEFENDED, expect=expect)
    shipped = _shipped_defended(suite, member, defense_name)
    if shipped is not None:
        pin = suite.defended_sha256[defense_name][member.name]
        return Location(shipped, Origin.DEFENDED, pin, expect,
                        f"either the file was changed (it ships with mtlbench: reinstall mtlbench; in a checkout: "
                        f"`git checkout -- {shipped}`) or the pin was (the manifest {suite.path or suite.name}, "
                        f"[weights.defended.\"{defense_name}\"] {member.name} = \"{pin}\")")
    local = defended_dir(suite, member, defense_name)
    if (local / CONFIG_FILE).exists() and not _is_stale_defended(local, suite, member):
        return Location(local, Origin.DEFENDED, expect=expect)
    return Location(None, Origin.DEFENDED, expect=expect)


def check_defended(directory: Path, suite: Suite, member: Member, defense_name: str, *,
                   weights_dir: str | Path | None = None) -> None:
    """Refuse a defended checkpoint of another defense, or one trained from other parent weights
    than the member's current ones (a rebuilt member makes its defended checkpoints stale)."""
    info = read_config(directory)
    if info.defense.get("spec") != defense_name:
        raise CheckpointError(f"{directory / CONFIG_FILE}: defense.spec is {info.defense.get('spec')!r}, expected "
                              f"{defense_name!r}")
    parent = parent_sha256(suite, member, weights_dir=weights_dir)
    if parent is not None and info.defense.get("parent_sha256") != parent:
        raise CheckpointError(
            f"{directory}: trained from parent weights sha256 {str(info.defense.get('parent_sha256'))[:12]}..., but "
            f"{suite.name}/{member.name} is now {parent[:12]}...; train it again with "
            f"`mtlbench defend {suite.name} --defense {defense_name} --models {member.name} --rebuild`")


# -- finding, never building ---------------------------------------------------------------------

def find_member(suite: Suite, member: Member, *, weights_dir: str | Path | None = None) -> Location:
    """Where ``member``'s checkpoint is (:func:`locate_member`), or an error that says how to get
    it: loading a target finds and loads, it never trains (a run builds what it needs first, from
    its plan)."""
    location = locate_member(suite, member, weights_dir=weights_dir)
    if not location.found:
        raise MissingWeightsError(f"{suite.name}/{member.name} is not built on this machine: run `mtlbench zoo build "
                                  f"{suite.name} --model {member.name}` (a run plans and builds it first)")
    return location


def find_defended(suite: Suite, member: Member, defense_name: str, *,
                  weights_dir: str | Path | None = None) -> Location:
    """Where ``member``'s checkpoint under the training defense ``defense_name`` is, checked against its
    defense and parent weights, or an error that says how to train it (never a training run)."""
    location = locate_defended(suite, member, defense_name, weights_dir=weights_dir)
    if not location.found:
        raise MissingWeightsError(f"{suite.name}/{member.name}+{defense_name} is not trained yet: run `mtlbench defend "
                                  f"{suite.name} --defense {defense_name} --models {member.name}`")
    check_defended(location.directory, suite, member, defense_name, weights_dir=weights_dir)
    return location


# -- external models ---------------------------------------------------------------------------

def locate_external(directory: str | Path) -> Location:
    """A checkpoint directory the user brings (``--model DIR``): loaded as it is, no pin."""
    d = Path(directory)
    if not (d / CONFIG_FILE).exists():
        raise CheckpointError(f"{d}: no {CONFIG_FILE}; a Hub-format checkpoint directory holds model.safetensors, "
                              "config.json and README.md")
    return Location(d, Origin.EXTERNAL)
