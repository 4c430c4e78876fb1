"""How a member is trained, as the optimiser sees it: :class:`TrainRecipe` (stored in each
checkpoint's ``config.json``). Its defaults are the ones a manifest's ``[training]`` table falls
back to (:class:`benchmark.suites.Training` takes them from here), so they are written once. No
torch here: a manifest is read without it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["TrainRecipe"]


@dataclass
class TrainRecipe:
    """How a checkpoint was trained (stored in its ``config.json``)."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    schedule: str = "cosine"
    seed: int = 0
    #: the precision the weights are stored (and shipped) in; a member is rounded to it before its
    #: clean metrics are measured, so the stored values are the model
    weights_dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)
