"""Convert the paper authors' checkpoints to mtlbench's format.

Their files are ``<weightroot>/<layout_idx>/<task1>_<task2>_....model``: a torch pickle whose
``state["state_dict"]`` is the state dict of TreeMTL's ``MTSeqModel`` (its ``main/`` code). We read them
with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects, and map the names:

* ``backbone.mtl_blocks.<k>.compute_nodes.<j>.basicOp.<param>``: block copy ``k`` runs over the
  *fine* branch points (17 for ResNet34, 32 for MobileNetV2) and, inside each, over the task sets
  in TreeMTL's list order (:func:`~benchmark.models.layouts.treemtl_set_order`); node ``j`` is a
  prototxt layer in file order. The fine points of one of our 5 blocks are consecutive
  (ResNet34: 1, 3, 4, 6, 3; MobileNetV2: 7, 11, 5, 8, 1), so the convolution and batch-norm
  nodes of a block copy, in order, are those of our block in prototxt order (in a ResNet
  residual block the 1x1 projection comes first, as in AdaShare's prototxt).
* ``heads.<task>.fc<n>.conv<m>.<param>`` (ASPP branches with rates 6, 12, 18, 24) ->
  ``heads.<task>.branches.<n-1>.conv<m>.<param>``.

A ``module.`` prefix (DataParallel) is stripped. Every tensor must find its place with the right
shape; anything else is an error naming the key.
"""

from __future__ import annotations

import pickle
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.models.backbones import BasicBlock
from benchmark.models.branched import BranchedModel, set_key
from benchmark.models.layouts import Layout, layout_index, treemtl_set_order

__all__ = ["FINE_BLOCKS", "PaperImportError", "convert_paper_state_dict", "load_paper_checkpoint",
           "paper_checkpoint_path"]

FINE_BLOCKS = {"resnet34": (1, 3, 4, 6, 3), "mobilenetv2": (7, 11, 5, 8, 1)}
_NODE = re.compile(r"backbone\.mtl_blocks\.(\d+)\.compute_nodes\.(\d+)\.basicOp\.(\w+)")
_HEAD = re.compile(r"heads\.(\w+?)\.fc(\d)\.(conv\d)\.(weight|bias)")


class PaperImportError(UserError):
    """A paper checkpoint that cannot be converted."""


def paper_checkpoint_path(weight_root: str | Path, layout: Layout, tasks: list[str]) -> Path:
    return Path(weight_root) / str(layout_index(layout)) / ("_".join(tasks) + ".model")


def load_paper_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a paper checkpoint, read without executing pickled code."""
    p = Path(path)
    if not p.exists():
        raise PaperImportError(f"paper checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message goes on to explain how to load the file with weights_only=False; a
        # benchmark never does: say what was found, not how to run it
        unsupported = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        if unsupported:  # torch's message goes on with ways around it: never ours to suggest
            raise PaperImportError(f"{p}: refused: it holds pickled objects other than tensors "
                                   f"({unsupported.group(1)}), and mtlbench reads weights-only checkpoints, never "
                                   "pickled code") from None
        raise PaperImportError(f"{p}: cannot be read as a weights-only torch checkpoint (UnpicklingError: not a "
                               "checkpoint of tensors)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or ["empty file"])[0][:200]
        raise PaperImportError(f"{p}: cannot be read as a weights-only torch checkpoint "
                               f"({type(exc).__name__}: {first})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PaperImportError(f"{p}: expected state['state_dict'] to be a dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _prototxt_nodes(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and batch-norm modules of one of our block copies, in the paper prototxt's order."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d | nn.BatchNorm2d):
            out.append((prefix, module))
            return
        children = list(module.named_children())
        if isinstance(module, BasicBlock):  # projection shortcut first
            children.sort(key=lambda kv: kv[0] != "downsample")
        for name, child in children:
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", block)
    return out


def convert_paper_state_dict(state: dict[str, torch.Tensor], model: BranchedModel) -> dict[str, torch.Tensor]:
    """Map a paper ``MTSeqModel`` state dict onto ``model``'s names (see the module docstring)."""
    backbone = model.config.backbone
    if backbone not in FINE_BLOCKS:
        raise PaperImportError(f"no paper checkpoint format is known for backbone {backbone!r}")
    nodes: dict[int, dict[int, dict[str, torch.Tensor]]] = defaultdict(lambda: defaultdict(dict))
    heads: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if m := _NODE.fullmatch(key):
            nodes[int(m[1])][int(m[2])][m[3]] = tensor
        elif m := _HEAD.fullmatch(key):
            heads[f"heads.{m[1]}.branches.{int(m[2]) - 1}.{m[3]}.{m[4]}"] = tensor
        else:
            raise PaperImportError(f"unexpected key {key!r} in the paper checkpoint")
    order = treemtl_set_order(model.layout)
    copies = [(i, s) for i, n in enumerate(FINE_BLOCKS[backbone]) for _ in range(n) for s in order[i]]
    if sorted(nodes) != list(range(len(copies))):
        raise PaperImportError(f"the checkpoint has {len(nodes)} backbone block copies, but layout "
                               f"{model.layout} on {backbone} needs {len(copies)}: wrong layout index?")
    theirs: dict[tuple[int, frozenset], list[dict[str, torch.Tensor]]] = defaultdict(list)
    for k, (i, s) in enumerate(copies):
        theirs[(i, s)] += [nodes[k][j] for j in sorted(nodes[k])]
    out = dict(heads)
    for (i, s), their_nodes in theirs.items():
        prefix = f"blocks.{i}.{set_key(s)}"
        ours = _prototxt_nodes(model.blocks[i][set_key(s)])
        if len(ours) != len(their_nodes):
            raise PaperImportError(f"block {i}, task set {sorted(s)}: {len(their_nodes)} conv/bn layers in the "
                                   f"checkpoint, {len(ours)} in the model")
        for (name, module), params in zip(ours, their_nodes, strict=True):
            expected = dict(module.state_dict())
            if set(params) != set(expected):
                raise PaperImportError(f"{prefix}.{name}: checkpoint layer has {sorted(params)}, the model's "
                                       f"{type(module).__name__} has {sorted(expected)}")
            for pname, tensor in params.items():
                if tensor.shape != expected[pname].shape:
                    raise PaperImportError(f"{prefix}.{name}.{pname}: shape {tuple(tensor.shape)} in the "
                                           f"checkpoint, {tuple(expected[pname].shape)} in the model")
                out[f"{prefix}.{name}.{pname}"] = tensor
    wanted = set(model.state_dict())
    missing, extra = sorted(wanted - set(out)), sorted(set(out) - wanted)
    if missing or extra:
        raise PaperImportError(f"the converted weights do not fit the model: missing {missing[:3]}, "
                               f"unexpected {extra[:3]}")
    return out
