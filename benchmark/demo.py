"""The first run a new user meets: ``mtlbench demo``.

Trains a few tiny branched models on the synthetic NYUv2-like scenes, measures their clean
performance against a constant predictor, and renders a static leaderboard site. Everything is
seeded; on 2 CPU cores it takes a few minutes.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from benchmark import __version__
from benchmark.data import SyntheticScenes, make_loader, save_preview
from benchmark.evaluation import evaluate
from benchmark.models import BranchedModel, Layout, layout_index
from benchmark.tasks import Task, get_tasks
from benchmark.zoo.train import TrainRecipe, train_model

__all__ = ["DEMO_LAYOUTS", "run_demo"]

#: All-shared, one paper layout from the middle of the sharing range, independent.
DEMO_LAYOUTS = ("AS", "[[{0,1,2}], [{0,1,2}], [{0,1,2}], [{0},{1,2}], [{0},{1},{2}]]", "IND")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _trivial_metrics(tasks: list[Task], batch: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    out = {}
    for t in tasks:
        metric = t.new_metric()
        metric.update(t.trivial_prediction(batch), batch)
        out[t.name] = metric.compute()
    return out


def _headline_gain(trivial: dict, metrics: dict) -> float:
    """Mean relative improvement (%) of the headline metric of each NYUv2 task over ``trivial``."""
    acc = metrics["segment_semantic"]["pixel_acc"] / trivial["segment_semantic"]["pixel_acc"] - 1
    angle = 1 - metrics["normal"]["mean"] / trivial["normal"]["mean"]
    depth = 1 - metrics["depth_zbuffer"]["abs_err"] / trivial["depth_zbuffer"]["abs_err"]
    return 100 * (acc + angle + depth) / 3


def run_demo(out_dir: str | Path = "site", *, steps: int = 200, train_size: int = 512, test_size: int = 64,
             resolution: int = 48, seed: int = 0, device: str = "cpu", console: Console | None = None) -> Path:
    console = console or Console()
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = get_tasks("nyuv2")
    channels = {t.name: t.channels for t in tasks}
    start = time.perf_counter()
    console.print(f"[bold]mtlbench demo[/]: synthetic NYUv2-like scenes at {resolution}x{resolution}, "
                  f"{len(DEMO_LAYOUTS)} tiny models, {steps} training steps each")
    train = SyntheticScenes("nyuv2", "train", size=train_size, resolution=resolution, seed=seed)
    test = SyntheticScenes("nyuv2", "test", size=test_size, resolution=resolution, seed=seed)
    train.materialize()
    full_test = test.materialize()
    preview = save_preview(test, out / "scenes.png", rows=4, title="synthetic-nyuv2: RGB and ground truth")
    trivial = _trivial_metrics(tasks, full_test)

    rows = []
    recipe = TrainRecipe(steps=steps, batch_size=16, lr=3e-3, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), console=console) as progress:
        for text in DEMO_LAYOUTS:
            layout = Layout.parse(text, num_tasks=len(tasks))
            model = BranchedModel(layout, channels, width=0.125, head_hidden=32, head_rates=(1, 2, 3, 4))
            bar = progress.add_task(f"train {layout.name[:28]:<28}", total=steps, loss=float("nan"))
            train_model(model, tasks, train, recipe, device=device,
                        progress=lambda step, loss, bar=bar: progress.update(bar, completed=step, loss=loss))
            metrics = evaluate(model, tasks, make_loader(test, 32), device=device)
            rows.append([layout.name, layout_index(layout), round(model.backbone_parameters() / 1e6, 3),
                         metrics["segment_semantic"]["mIoU"], metrics["segment_semantic"]["pixel_acc"],
                         metrics["normal"]["mean"], metrics["depth_zbuffer"]["abs_err"],
                         _headline_gain(trivial, metrics)])
    rows.append(["constant predictor", None, 0.0, trivial["segment_semantic"]["mIoU"],
                 trivial["segment_semantic"]["pixel_acc"], trivial["normal"]["mean"],
                 trivial["depth_zbuffer"]["abs_err"], 0.0])
    elapsed = time.perf_counter() - start
    report = {
        "title": "tiny-nyuv2 demo",
        "subtitle": f"{len(DEMO_LAYOUTS)} tiny branched ResNet34 models (width 0.125) trained on {train_size} "
                    f"synthetic scenes, evaluated on {test_size} held-out scenes at {resolution}x{resolution}.",
        "sections": [{
            "title": "Clean performance",
            "note": "Improvement over a constant predictor (majority class, mean direction, median depth): "
                    "the mean relative gain in pixel accuracy, normal mean angle and depth abs error.",
            "columns": ["model", "paper index", "backbone params (M)", "seg mIoU", "seg pixel acc",
                        "normal mean angle (°)", "depth abs err (m)", "improvement over constant (%)"],
            "rows": rows,
        }],
        "provenance": {
            "mtlbench": __version__, "git commit": git_commit(), "torch": torch.__version__, "device": device,
            "machine": platform.machine(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall time (s)": round(elapsed, 1), "seed": seed,
            "command": f"mtlbench demo --out {out_dir} --steps {steps} --resolution {resolution}",
        },
    }
    from leaderboard import render_site

    index = render_site(report, out, assets={"scenes.png": preview})
    console.print(f"demo finished in {elapsed:.0f} s")
    return index
