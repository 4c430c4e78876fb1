"""A plugin module that makes every training function of mtlbench fail in the runner's worker
processes (which import it; the process that plans and builds is left as it is): a test that
loads every kind of target in a worker with it shows that no code path below the plan trains."""

import multiprocessing

import benchmark.defenses.training as adversarial
import benchmark.training as training
import benchmark.zoo.build as build
import benchmark.zoo.defend as defend


def _refuse(*args, **kwargs):
    raise AssertionError("a worker tried to train: loading a target must never train")


if multiprocessing.parent_process() is not None:  # a worker process
    for module, names in ((training, ("train_model", "optimise")), (adversarial, ("adversarial_training",)),
                          (build, ("build_suite", "build_member", "build_pretext", "train_model")),
                          (defend, ("defend_suite", "defend_member"))):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _refuse)
