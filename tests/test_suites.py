"""Suite manifests: the standard suites, the MobileNetV2 selection rule, validation errors."""

import re
import textwrap

import pytest
from manifests import AS_AND_LAYOUT_9

from benchmark.cli import main
from benchmark.models import BranchedModel
from benchmark.models.layouts import Layout, enumerate_layouts, layout_from_index
from benchmark.suites import SuiteError, list_suites, load_suite, suites_dir

FULL = {"nyuv2-resnet34": 25, "nyuv2-mobilenetv2": 20, "taskonomy-resnet34": 15}


def test_standard_suites_load_with_their_sizes():
    assert set(list_suites()) == set(FULL) | {f"tiny-{n}" for n in FULL}
    for name, size in FULL.items():
        full, tiny = load_suite(name), load_suite(f"tiny-{name}")
        assert len(full.members) == size and len(tiny.members) == size
        assert [m.layout for m in tiny.members] == [m.layout for m in full.members]
        assert tiny.tiny and not full.tiny and tiny.synthetic
        assert tiny.backbone == full.backbone and tiny.members[0].width < 1 and tiny.members[0].input_size <= 64
        assert {"quick", "paper"} <= set(full.profiles) and {"quick", "paper"} <= set(tiny.profiles)
        # nothing is published yet, and nothing is invented
        assert all(m.revision == "" and m.sha256 == "" for m in full.members)
        assert all(re.fullmatch(r"mtlbench/[\w.-]+", m.repo_id) for m in full.members)
        assert full.unpublished() == list(full.members) and tiny.unpublished() == []


def test_paper_profile_is_the_papers_protocol():
    suite = load_suite("nyuv2-resnet34")
    paper = suite.profile("paper")
    assert paper.eps == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16)
    assert paper.eval_size is None and suite.split == "test" and suite.members[0].input_size == 321
    assert load_suite("taskonomy-resnet34").members[0].input_size == 224
    assert load_suite("taskonomy-resnet34").split == "test_small"


@pytest.mark.parametrize("suite, key, num_tasks", [("nyuv2-resnet34", "nyuv2_resnet34", 3),
                                                   ("taskonomy-resnet34", "taskonomy_resnet34", 5)])
def test_resnet_suites_are_the_papers_tables(paper_layouts, suite, key, num_tasks):
    members = load_suite(suite).members
    assert {str(m.index) if m.index is not None else m.name for m in members} == {
        m["index"] for m in paper_layouts[key]["models"]}
    for m in paper_layouts[key]["models"]:
        if m["layout"] is not None and m["index"] not in ("IND", "AS"):
            member = next(x for x in members if str(x.index) == m["index"])
            assert Layout.parse(member.layout, num_tasks=num_tasks) == Layout.from_sets(m["layout"])
    assert {m.name for m in members} >= {"IND", "AS"}


def test_mobilenet_suite_follows_its_documented_rule():
    suite = load_suite("nyuv2-mobilenetv2")
    assert "evenly spaced ranks" in suite.selection
    as_model = BranchedModel("AS", {"s": 40, "n": 3, "d": 1}, backbone="mobilenetv2")
    per_block = [sum(p.numel() for p in b.parameters()) for b in as_model.blocks]
    layouts = enumerate_layouts(3)
    ranked = sorted(((sum(len(b) * n for b, n in zip(lay.blocks, per_block, strict=True)), i)
                     for i, lay in enumerate(layouts)), key=lambda c: (-c[0], c[1]))
    expected = [layouts[ranked[round(j * 50 / 19)][1]] for j in range(20)]
    assert [Layout.parse(m.layout, num_tasks=3) for m in suite.members] == expected
    assert expected[0].is_independent and expected[-1].is_all_shared


GOOD = """
[suite]
name = "mini"
dataset = "nyuv2"
data = "synthetic-nyuv2"
width = 0.125
input_size = 32

[profiles.quick]
eps = [4, 8]
attacks = ["pgd:gb-mta"]

""" + AS_AND_LAYOUT_9


def _write(tmp_path, text, name="mini.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_small_custom_manifest_loads(tmp_path):
    suite = load_suite(_write(tmp_path, GOOD))
    assert [m.name for m in suite.members] == ["AS", "layout-9"]
    assert suite.member("9").index == 9 and suite.tiny


@pytest.mark.parametrize("edit, key, message", [
    (("[suite]\n", "[suite]\ncolour = 'red'\n"), "suite.colour", "unknown key"),
    (("[[models]]\nname = \"AS\"", "[[models]]\nname = \"AS\"\nlayers = 3"), "models[0].layers", "unknown key"),
    (("eps = [4, 8]", "eps = [4, 8]\nepsilon = 3"), "profiles.quick.epsilon", "unknown key"),
    (("[suite]\n", "[extra]\nx = 1\n[suite]\n"), "extra", "unknown key"),
    (("index = 9\n", "index = 9\nrevision = \"main\"\nsha256 = \"" + "a" * 64 + "\"\n"), "models[1].revision",
     "not a pinned commit"),
    (("index = 9\n", "index = 9\nrevision = \"" + "a" * 40 + "\"\n"), "models[1].sha256", "give both or neither"),
    (("index = 9\n", "index = 9\nsha256 = \"xyz\"\nrevision = \"" + "a" * 40 + "\"\n"), "models[1].sha256",
     "not a sha256"),
    (("name = \"AS\"", "name = \"layout-9\""), "models[1].name", "duplicate model name"),
    (("layout = \"AS\"", "layout = \"[[{0,1,2}], [{0,1}]]\""), "models[0].layout", "missing"),
    (("index = 9", "index = 10"), "models[1].index", "paper index 10 is"),
    (("eps = [4, 8]", "eps = [4, 300]"), "profiles.quick.eps", "0-255"),
    (("attacks = [\"pgd:gb-mta\"]", "attacks = [\"pgdd:*\"]"), "profiles.quick.attacks", "matches no registered"),
    (("dataset = \"nyuv2\"", "dataset = \"coco\""), "suite.dataset", "unknown dataset"),
    (("width = 0.125", "width = \"small\""), "suite.width", "expected a number"),
])
def test_bad_manifests_name_the_file_and_key(tmp_path, edit, key, message):
    old, new = edit
    text = textwrap.dedent(GOOD)
    assert old in text
    path = _write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert str(path) in text and key in text and message in text


def test_a_member_entry_s_head_rates_are_its_own(tmp_path):
    """``head_rates`` of a [[models]] entry was accepted and then ignored; it now sets the member's."""
    text = textwrap.dedent(GOOD).replace('name = "AS"', 'name = "AS"\nhead_rates = [1, 2]', 1)
    suite = load_suite(_write(tmp_path, text))
    assert suite.member("AS").head_rates == (1, 2) and suite.member("layout-9").head_rates != (1, 2)


def test_unknown_suite_and_toml_syntax(tmp_path):
    with pytest.raises(SuiteError, match="unknown suite 'nope'.*tiny-nyuv2-resnet34"):
        load_suite("nope")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(_write(tmp_path, "[suite\nname = 1"))


def test_mirrors_take_their_models_from_the_full_suite(tmp_path):
    text = '[suite]\nname = "m"\ndataset = "nyuv2"\nmirror = "nyuv2-resnet34"\nwidth = 0.25\n' \
           '[profiles.q]\neps = [8]\nattacks = ["fgsm:total"]\n'
    suite = load_suite(_write(tmp_path, text))
    assert len(suite.members) == 25 and suite.members[0].width == 0.25 and suite.data_source == "synthetic-nyuv2"
    with pytest.raises(SuiteError, match="mirror suite takes its models"):
        load_suite(_write(tmp_path, text + '[[models]]\nlayout = "AS"\n', "m2.toml"))


def test_manifests_ship_next_to_the_package():
    assert (suites_dir() / "nyuv2-resnet34.toml").exists()
    assert layout_from_index(9, 3) == Layout.parse(load_suite("nyuv2-resnet34").member("layout-9").layout,
                                                   num_tasks=3)


def test_suites_cli(capsys, wide_console):
    assert main(["suites", "list"]) == 0
    out = capsys.readouterr().out
    assert "nyuv2-resnet34" in out and "tiny-taskonomy-resnet34" in out and "0/25 published" in out
    assert main(["suites", "show", "nyuv2-resnet34"]) == 0
    out = capsys.readouterr().out
    assert "layout-9" in out and "63.6" in out and "not published" in out and "paper" in out
    assert main(["suites", "show", "bogus"]) == 2
    assert "unknown suite" in capsys.readouterr().err
