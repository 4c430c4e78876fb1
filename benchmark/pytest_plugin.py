"""mtlbench's pytest plugin (registered through the ``pytest11`` entry point when mtlbench is
installed): fixtures with which a test asserts an attack's strength on a tiny suite in a few lines.

* ``mtl_suite``: the suite (``mtlbench_suite`` in the pytest ini, default ``tiny-nyuv2-resnet34``);
* ``mtl_model``: its member ``mtlbench_model`` (default ``AS``) in eval mode, built on first use;
* ``attack_strength(attack, eps=8, models=None, seed=0)``: the mean ARP (%) of ``attack`` over
  the models (default: ``mtlbench_model``) on the suite's ``quick`` profile images, measured by the
  runner's own cells (validator, isolation, counted passes) in this process, so an attack that the
  test module registers is found. An attack whose cells are not valid fails the test with the
  validator's reason.

>>> def test_my_attack_beats_fgsm(attack_strength):  # doctest: +SKIP
...     assert attack_strength("my-attack:gb-mta") > attack_strength("fgsm:gb-mta")
"""

from __future__ import annotations

import pytest

from benchmark.enums import Status

__all__ = ["attack_strength", "mtl_model", "mtl_suite"]


def pytest_addoption(parser) -> None:
    parser.addini("mtlbench_suite", "suite name or manifest path of the mtl_* fixtures",
                  default="tiny-nyuv2-resnet34")
    parser.addini("mtlbench_model", "the suite member of mtl_model and attack_strength", default="AS")
    parser.addini("mtlbench_profile", "the suite profile attack_strength measures with", default="quick")


@pytest.fixture(scope="session")
def mtl_suite(pytestconfig):
    from benchmark.suites import load_suite

    return load_suite(pytestconfig.getini("mtlbench_suite"))


@pytest.fixture(scope="session")
def mtl_model(mtl_suite, pytestconfig):
    from benchmark.zoo import load_model

    model, _ = load_model(mtl_suite, pytestconfig.getini("mtlbench_model"))
    return model


@pytest.fixture(scope="session")
def attack_strength(mtl_suite, pytestconfig, tmp_path_factory):
    from benchmark.runner import ResultsStore, RunOptions, run

    store = tmp_path_factory.mktemp("mtlbench") / "results.db"
    suite_ref = str(mtl_suite.path) if mtl_suite.path is not None else mtl_suite.name

    def measure(attack: str, *, eps: float = 8.0, models: list[str] | None = None, seed: int = 0) -> float:
        members = list(models or [pytestconfig.getini("mtlbench_model")])
        summary = run(RunOptions(suite=suite_ref, profile=pytestconfig.getini("mtlbench_profile"), attacks=[attack],
                                 eps=[eps], models=members, seeds=[seed], defenses=["none"], results=str(store),
                                 workers=1))
        with ResultsStore(store, readonly=True) as results:
            cells = [c for c in map(results.get, summary.keys) if c is not None]
        bad = [c for c in cells if c.status != Status.VALID]
        if bad:
            pytest.fail(f"{attack} at eps {eps:g} on {bad[0].model}: {bad[0].status}: {bad[0].reason}", pytrace=False)
        if not cells:
            pytest.fail(f"{attack} at eps {eps:g}: no cell was run ({', '.join(summary.missing_models) or 'none'})",
                        pytrace=False)
        return sum(c.arp for c in cells) / len(cells)

    return measure
