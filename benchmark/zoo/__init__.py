"""The model zoo: Hub-format checkpoints, Hub download/push at pinned revisions, tiny builds and
training of suite members, import of the paper authors' checkpoints.

>>> from benchmark.zoo import load_model
>>> model, info = load_model("tiny-nyuv2-resnet34", "AS")  # doctest: +SKIP
"""

from benchmark.zoo.build import build_suite, load_model
from benchmark.zoo.checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, read_config, save_checkpoint
from benchmark.zoo.hub import MissingWeightsError, local_checkpoint_dir, mtlbench_home
from benchmark.zoo.locate import is_built

__all__ = ["CheckpointError", "CheckpointInfo", "MissingWeightsError", "build_suite", "is_built", "load_checkpoint",
           "load_model", "local_checkpoint_dir", "mtlbench_home", "read_config", "save_checkpoint"]
