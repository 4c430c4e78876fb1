"""The findings of a hostile review, each a message naming the value (or a refusal), never a
traceback: manifests, baselines, bundles' statistics, pickles, exit statuses."""

import base64
import json
import re
import zlib

import pytest

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.suites import load_suite


def _manifest(tmp_path, old: str, new: str, suite: str = "tiny-nyuv2-resnet34"):
    text = load_suite(suite).path.read_text()
    assert old in text, old
    path = tmp_path / "m.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_an_inference_time_defense_has_no_weights_to_pin(tmp_path):
    text = load_suite("tiny-nyuv2-resnet34").path.read_text()
    i = text.index("[weights.defended")
    path = tmp_path / "m.toml"
    path.write_text(text[:i] + '[weights.defended."bitdepth:4"]\nAS = "' + "a" * 64 + '"\n\n' + text[i:])
    with pytest.raises(UserError, match=r"weights.defended.bitdepth:4: bitdepth:4 is an inference-time defense"):
        load_suite(path)


@pytest.mark.parametrize("repo", ["../..", "probe/..", "a/..b", "a--b/c"])
def test_a_repo_id_the_hub_would_refuse_is_refused_when_the_manifest_is_read(tmp_path, repo):
    text = load_suite("nyuv2-resnet34").path.read_text()
    first = re.search(r'^repo_id = "[^"]*"', text, re.M)
    path = tmp_path / "m.toml"
    if first is not None:
        path.write_text(text.replace(first.group(0), f'repo_id = "{repo}"', 1))
    else:
        path.write_text(text.replace("[[models]]\n", f'[[models]]\nrepo_id = "{repo}"\n', 1))
    with pytest.raises(UserError, match=r"is not a Hub repo id"):
        load_suite(path)


def test_an_imagenet_file_outside_its_repo_is_refused(tmp_path):
    text = load_suite("nyuv2-resnet34").path.read_text()
    path = tmp_path / "m.toml"
    if "file = " in text:
        path.write_text(re.sub(r'^file = "[^"]*"', 'file = "../../../../etc/passwd"', text, count=1, flags=re.M))
    else:
        path.write_text(text.replace("[training.imagenet]\n", '[training.imagenet]\nfile = "../../../../etc/passwd"\n'))
    with pytest.raises(UserError, match=r"training.imagenet.file: '../../../../etc/passwd' is not a file of the repo"):
        load_suite(path)


def _baseline(tmp_path, **changes):
    data = {"format": "mtlbench-baseline", "version": 1, "suite": "s", "profile": "quick", "models": ["AS"],
            "eps": [8], "seeds": [0], "reference": "pgd:total", "attacks": {}, **changes}
    from benchmark.runner.check import BASELINE_FORMAT, BASELINE_VERSION

    data.update(format=BASELINE_FORMAT, version=BASELINE_VERSION)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("images", [0, 10**9, "32"])
def test_a_baseline_with_absurd_images_names_the_file_and_key(tmp_path, images):
    from benchmark.runner.check import load_baseline

    path = _baseline(tmp_path, images=images)
    with pytest.raises(UserError, match=rf'baseline {re.escape(str(path))}: "images" is'):
        load_baseline(path)


def test_a_deeply_nested_baseline_is_a_message(tmp_path):
    from benchmark.runner.check import load_baseline

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match=r"nests its values too deeply"):
        load_baseline(path)


def test_a_statistics_bomb_is_refused_before_it_inflates():
    from benchmark.metric_base import MAX_STATES_BYTES, decode_states

    bomb = base64.b64encode(zlib.compress(b"\0" * (MAX_STATES_BYTES + 2**20), 9)).decode()
    with pytest.raises(ValueError, match=r"inflates to more than 64 MiB"):
        decode_states(bomb, {})


def test_a_malicious_pickle_is_refused_without_torchs_advice(tmp_path):
    import os

    import torch

    from benchmark.zoo.paper import PaperImportError, load_paper_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {"a": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(PaperImportError) as info:
        load_paper_checkpoint(tmp_path / "evil.pth")
    assert "never pickled code" in str(info.value) and "weights_only=False" not in str(info.value)


def test_suites_show_says_mirror_only_of_a_mirror(capsys, wide_console):
    assert main(["suites", "show", "nyuv2-resnet34"]) == 0
    assert "mirror of None" not in capsys.readouterr().out
    assert main(["suites", "show", "tiny-nyuv2-resnet34"]) == 0
    assert "tiny mirror of nyuv2-resnet34" in capsys.readouterr().out


def test_usage_errors_and_bad_cells_have_their_own_exit_statuses(mini, tmp_path, capsys):
    assert main(["run", "--suite", str(mini), "--results", str(tmp_path / "r.db"), "--eps", "300"]) == 2
    from benchmark.cli.common import EXIT_BAD_CELLS, EXIT_INCOMPLETE, EXIT_USAGE

    assert len({EXIT_BAD_CELLS, EXIT_USAGE, EXIT_INCOMPLETE}) == 3
