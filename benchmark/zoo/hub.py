"""The Hugging Face Hub side of the zoo: downloading a member at its pinned revision, pushing a
checkpoint and pinning it in a manifest, and the folders members are built in or ship in (the
local zoo ``$MTLBENCH_HOME/zoo/<suite>/<member>/``, mtlbench's own ``benchmark/zoo/weights/``).
Which of them a model is loaded from is :mod:`benchmark.zoo.locate`'s.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from benchmark.errors import UserError
from benchmark.paths import PRETEXT_DIR, SHIPPED_ZOO, mtlbench_home, zoo_root
from benchmark.suites import REPO_ID, Member, Suite
from benchmark.zoo.checkpoint import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, CheckpointError, file_sha256, read_config

__all__ = ["PRETEXT_DIR", "SHIPPED_ZOO", "MissingWeightsError", "download_member", "hub_offline",
           "local_checkpoint_dir", "mtlbench_home", "pin_in_manifest", "pin_shipped", "pretext_dir", "push_checkpoint",
           "shipped_dir", "shipped_pretext_dir", "shipped_root"]

CHECKPOINT_FILES = [WEIGHTS_FILE, CONFIG_FILE, CARD_FILE]


class MissingWeightsError(UserError):
    """A member whose weights are neither local nor published."""


def local_checkpoint_dir(suite: Suite, member: Member) -> Path:
    """Where mtlbench builds or trains ``member`` of ``suite`` locally."""
    return zoo_root(suite.name) / member.name


def pretext_dir(suite: Suite) -> Path:
    """Where a suite's common pre-trained backbone (``init = "pretext"``) is built locally (member
    names start with a letter or digit, so no member has this folder)."""
    return zoo_root(suite.name) / PRETEXT_DIR


def shipped_root(suite: Suite) -> Path:
    """Where a standard tiny suite's weights ship with mtlbench (the local zoo's layout)."""
    return zoo_root(suite.name, shipped=True)


def shipped_dir(suite: Suite, member: Member) -> Path:
    """Where ``member`` of a standard tiny suite ships with mtlbench."""
    return shipped_root(suite) / member.name


def shipped_pretext_dir(suite: Suite) -> Path:
    """Where the pre-trained backbone of a standard tiny suite ships with mtlbench."""
    return shipped_root(suite) / PRETEXT_DIR


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_member(suite: Suite, member: Member, *, cache_dir: str | Path | None = None, local_files_only: bool,
                    remedy: str) -> Path:
    """``member``'s checkpoint files at the pinned revision, through huggingface_hub's cache
    (``local_files_only``: from the cache or not at all); ``remedy`` says how else to get them."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = f"{suite.name}/{member.name} ({member.repo_id}@{member.revision[:12]})"
    try:
        path = snapshot_download(member.repo_id, revision=member.revision, allow_patterns=CHECKPOINT_FILES,
                                 cache_dir=cache_dir, local_files_only=local_files_only)
    except LocalEntryNotFoundError:
        raise MissingWeightsError(
            f"{label}: not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1 or local_files_only); "
            f"download it once with network access (unset HF_HUB_OFFLINE), or {remedy}") from None
    except RepositoryNotFoundError:
        raise MissingWeightsError(f"{label}: the Hub has no repo {member.repo_id!r} (or it is private: "
                                  f"log in with `hf auth login`); {remedy}") from None
    except RevisionNotFoundError:
        raise MissingWeightsError(f"{label}: the Hub repo has no revision {member.revision}; the manifest pins a "
                                  "commit that does not exist there") from None
    except EntryNotFoundError as exc:
        raise MissingWeightsError(f"{label}: a checkpoint file is missing on the Hub ({exc})") from None
    except (HfHubHTTPError, OSError) as exc:
        raise MissingWeightsError(f"{label}: download failed ({type(exc).__name__}: {exc}); retry, or set "
                                  "HF_HUB_OFFLINE=1 to use the cache only") from None
    path = Path(path)
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"{label}: the downloaded snapshot lacks {', '.join(missing)}")
    return path


def push_checkpoint(directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                    message: str | None = None) -> tuple[str, str]:
    """Upload a checkpoint directory to the Hub; returns ``(revision, sha256)`` to pin in the
    manifest."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    d = Path(directory)
    info = read_config(d)  # refuses directories that are not checkpoints
    if not (d / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{d}: {WEIGHTS_FILE} is missing; nothing to push")
    if not REPO_ID.fullmatch(repo_id):
        raise UserError(f"{repo_id!r} is not a Hub repo id ('owner/name')")
    digest = file_sha256(d / WEIGHTS_FILE)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        message = message or f"mtlbench {info.suite}/{info.member}: {info.model.layout}"
        commit = api.upload_folder(folder_path=str(d), repo_id=repo_id, repo_type="model",
                                   allow_patterns=CHECKPOINT_FILES, commit_message=message)
    except HfHubHTTPError as exc:
        raise UserError(f"push to {repo_id} failed: {exc}") from None
    return commit.oid, digest


_SHIPPED_COMMENT = """\
# The members' weights ship with mtlbench (benchmark/zoo/weights/<suite>/, Hub checkpoint format), each
# weights file's sha256 pinned here and checked on every load: every machine attacks the same weights.
# `mtlbench zoo build SUITE --ship` (and `mtlbench defend SUITE ... --ship`) trains them from the recipe
# above into that folder and writes these pins.
"""


def pin_shipped(manifest: str | Path, member: str, sha256: str, *, defense: str | None = None,
                detector: str | None = None) -> None:
    """Pin the sha256 of a shipped member's weights (``[weights.sha256]``), of its checkpoint
    under a training defense (``[weights.defended."<defense>"]``) or of its head of a learned
    detector (``[weights.detectors."<detector>"]``), in a tiny suite's manifest. The table is
    rewritten in place with its entries sorted; the rest of the text is kept."""
    import tomllib

    path = Path(manifest)
    text = path.read_text()
    table = tomllib.loads(text).get("weights", {})
    if detector is not None:
        entries = dict(table.get("detectors", {}).get(detector, {}))
        header = f'[weights.detectors."{detector}"]'
    else:
        entries = dict(table.get("sha256", {}) if defense is None else table.get("defended", {}).get(defense, {}))
        header = "[weights.sha256]" if defense is None else f'[weights.defended."{defense}"]'
    entries[member] = sha256
    body = "".join(f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', k) else json.dumps(k)} = \"{v}\"\n"
                   for k, v in sorted(entries.items()))
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        comment = _SHIPPED_COMMENT if "[weights" not in text else ""
        text = text.rstrip("\n") + "\n\n" + comment + header + "\n" + body
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1  # blank lines and the next table's comment stay where they are
        text = "".join(lines[:start + 1]) + body + "".join(lines[end:])
    path.write_text(text)


def pin_in_manifest(manifest: str | Path, member: str, *, repo_id: str, revision: str, sha256: str) -> None:
    """Write ``repo_id``, ``revision`` and ``sha256`` into ``member``'s ``[[models]]`` entry of a
    manifest (the text is edited in place, comments and order are kept)."""
    path = Path(manifest)
    text = path.read_text()
    blocks = re.split(r"(?m)^(?=\[\[models\]\])", text)
    for i, block in enumerate(blocks):
        if block.startswith("[[models]]") and re.search(rf'(?m)^name\s*=\s*"{re.escape(member)}"\s*$', block):
            for key, value in (("repo_id", repo_id), ("revision", revision), ("sha256", sha256)):
                line = f'{key} = "{value}"'
                if re.search(rf"(?m)^{key}\s*=", block):
                    block = re.sub(rf"(?m)^{key}\s*=.*$", line, block)
                else:
                    block = block.rstrip("\n") + "\n" + line + "\n"
            blocks[i] = block if block.endswith("\n") else block + "\n"
            path.write_text("".join(blocks))
            return
    raise UserError(f"{path}: no [[models]] entry with name = {member!r}")
