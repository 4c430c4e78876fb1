"""The first run a new user meets: ``mtlbench demo``.

1. takes the tiny suite (``tiny-nyuv2-resnet34``: 25 branched models on synthetic scenes) and the
   profile's trained defense (FAT with GB-MTA-PGD on the AS model), which ship with mtlbench
   pinned by sha256 (a suite of one's own, or another recipe, is built under ``$MTLBENCH_HOME``);
2. runs its ``quick`` profile (FGSM and PGD with every multi-task objective and each single task,
   two eps, 32 images, on every model; on the AS model also with FAT and with bit-depth reduction,
   and the black-box Square attack of the gradient-masking checks) into a results database,
   resuming if one is already there;
3. renders the static leaderboard site and returns the path of its ``index.html``.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from benchmark.data import save_preview
from benchmark.progress import make_console
from benchmark.runner import RunOptions, run
from benchmark.runner.run import build_targets
from benchmark.suites import load_suite

__all__ = ["run_demo"]


def run_demo(out_dir: str | Path = "site", *, suite: str = "tiny-nyuv2-resnet34", profile: str = "quick",
             results: str | Path = "results.db", device: str = "cpu", console: Console | None = None,
             threads: int | None = None) -> Path:
    from leaderboard import render_leaderboard

    console = console or make_console(stderr=True)
    suite_obj = load_suite(suite)
    start = time.perf_counter()
    console.print(Text.assemble(("mtlbench demo", "bold"), f": {suite_obj.name} ({len(suite_obj.members)} models), "
                                                           f"profile {profile!r}"))
    run_options = RunOptions(suite=suite, profile=profile, device=device, results=str(results), threads=threads)
    # every member, and the profile's trained defenses (FAT on AS) beside them once AS is built
    build_targets(run_options, console=console, whole_suite=True)
    trained = time.perf_counter()
    summary = run(run_options, console=console)
    ran = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = render_leaderboard(results, out)
    scenes = suite_obj.data(size=4)
    save_preview(scenes, out / "plots" / "scenes.png", rows=4, title=f"{suite_obj.data_source}: RGB and ground truth")
    console.print(f"zoo and defenses ready in {trained - start:.0f} s, {summary.total - summary.skipped} cells "
                  f"{ran - trained:.0f} s, site {time.perf_counter() - ran:.0f} s; results in {results}")
    return index
