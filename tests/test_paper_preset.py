"""The paper profiles apply the authors' presets and step counts, and the full suites score with
the authors' metric definitions."""

import pytest

from benchmark.errors import UserError
from benchmark.runner.cells import expand_grid
from benchmark.suites import load_suite


@pytest.mark.parametrize("suite", ["tiny-nyuv2-resnet34", "nyuv2-resnet34", "taskonomy-resnet34"])
def test_the_paper_profile_names_each_optimizers_preset(suite):
    s = load_suite(suite)
    cells = expand_grid(s, s.profile("paper"), models=[s.members[0].name], eps=[8])
    options = {c.attack.name: dict(c.attack.options) for c in cells}
    assert options["apgd:gb-mta"] == {"preset": "paper", "loss": "batch", "steps": 10}
    assert options["pgd:total"] == {"preset": "paper", "loss": "batch", "steps": 10}
    assert options["autosaga:total"] == {"preset": "paper", "loss": "batch", "steps": 10}
    assert options["autoattack"] == {"preset": "paper", "steps": 10}
    assert options["fgsm:gb-mta"] == {"loss": "batch"}
    # the attack is created with them
    apgd = next(c for c in cells if c.attack.name == "apgd:gb-mta").attack.create()
    assert apgd.preset == "paper" and apgd.random_start is False and apgd.initial_step(8) == pytest.approx(0.8)


def test_metric_modes_of_the_suites():
    assert {t.metric_mode for t in load_suite("nyuv2-resnet34").tasks} == {"paper"}
    assert {t.metric_mode for t in load_suite("tiny-nyuv2-resnet34").tasks} == {"ours"}


def test_bad_profile_options_are_refused_naming_the_key(mini, tmp_path):
    bad = tmp_path / "mini-run.toml"
    for options, words in (('{ apgd = { preset = "nope" } }', "unknown APGD preset 'nope'"),
                           ('{ nosuch = { steps = 2 } }', "'nosuch' is not a registered attack"),
                           ('{ pgd = { steps = [1] } }', "expected a table of option = value")):
        bad.write_text(mini.read_text().replace("[profiles.quick]\n", f"[profiles.quick]\noptions = {options}\n"))
        with pytest.raises(UserError, match=r"profiles\.quick\.options") as info:
            load_suite(str(bad))
        assert words in str(info.value)
    bad.write_text(mini.read_text().replace('name = "mini-run"', 'name = "mini-run"\nmetrics = "authors"'))
    with pytest.raises(UserError, match=r"suite\.metrics"):
        load_suite(str(bad))
