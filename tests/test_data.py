import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.data import SyntheticScenes, load_dataset, make_loader, save_preview
from benchmark.data.real import NYUv2, Taskonomy
from benchmark.data.synthetic import render_scenes, sample_scene
from benchmark.errors import UserError
from benchmark.tasks import get_tasks


def test_same_seed_same_scenes_whatever_the_batch():
    a = SyntheticScenes("nyuv2", "train", size=6, resolution=32, seed=3, cache=False)
    b = SyntheticScenes("nyuv2", "train", size=6, resolution=32, seed=3)
    one = a.render([4])
    many = b.render(range(6))
    for key in one:
        assert torch.equal(one[key][0], many[key][4]), key
    assert torch.equal(a[2]["image"], b[2]["image"])
    other_seed = SyntheticScenes("nyuv2", "train", size=6, resolution=32, seed=4).render([4])
    other_split = SyntheticScenes("nyuv2", "test", size=6, resolution=32, seed=3).render([4])
    assert not torch.equal(other_seed["image"], one["image"])
    assert not torch.equal(other_split["image"], one["image"])


def test_sample_ranges_and_types():
    batch = SyntheticScenes("taskonomy", "val", size=4, resolution=40).render(range(4))
    assert batch["image"].shape == (4, 3, 40, 40) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert batch["segment_semantic"].dtype == torch.int64 and batch["segment_semantic"].max() < 17
    assert (batch["depth_zbuffer"] > 0).all()
    assert torch.allclose(batch["normal"].norm(dim=1), torch.ones(4, 40, 40), atol=1e-4)
    for key in ("keypoints2d", "edge_texture"):
        assert batch[key].shape == (4, 1, 40, 40) and batch[key].min() >= 0 and batch[key].max() <= 1
    nyu = SyntheticScenes("nyuv2", "val", size=4, resolution=40).render(range(4))
    assert set(nyu) == {"image", "segment_semantic", "normal", "depth_zbuffer"}
    assert nyu["segment_semantic"].max() < 40 and len(nyu["segment_semantic"].unique()) >= 3


def _camera_points(depth: torch.Tensor, focal: float) -> torch.Tensor:
    """Back-project a z-buffer depth map (H, W) to camera-frame points (x right, y up, z forward)."""
    h, w = depth.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    u = ((xs + 0.5) - w / 2) / (h / 2) / focal
    v = -((ys + 0.5) - h / 2) / (h / 2) / focal
    z = depth.double()
    return torch.stack([u * z, v * z, z])


def test_normals_agree_with_the_depth_gradient():
    specs = [sample_scene(0, 0, i) for i in range(4)]
    out = render_scenes(specs, 96)
    agree = []
    for k, spec in enumerate(specs):
        pts = _camera_points(out["depth"][k, 0], spec.focal)
        dx = pts[:, 1:-1, 2:] - pts[:, 1:-1, :-2]
        dy = pts[:, :-2, 1:-1] - pts[:, 2:, 1:-1]
        n = F.normalize(torch.cross(dy, dx, dim=0), dim=0)
        n = n * torch.tensor([1.0, 1.0, -1.0], dtype=n.dtype).view(3, 1, 1)  # z towards the camera
        rendered = out["normal"][k][:, 1:-1, 1:-1].double()
        inst = out["instance"][k]
        interior = ((inst[1:-1, 1:-1] == inst[1:-1, 2:]) & (inst[1:-1, 1:-1] == inst[1:-1, :-2])
                    & (inst[1:-1, 1:-1] == inst[2:, 1:-1]) & (inst[1:-1, 1:-1] == inst[:-2, 1:-1]))
        cos = (n * rendered).sum(0)[interior & (inst[1:-1, 1:-1] < 40)]  # planar surfaces: room and boxes
        agree.append((cos > 0.98).float().mean().item())
    assert min(agree) > 0.9, agree


def test_segmentation_edges_lie_on_edge_pixels_and_keypoints_on_structure():
    batch = SyntheticScenes("taskonomy", "test", size=8, resolution=64).render(range(8))
    seg, edge, key = batch["segment_semantic"], batch["edge_texture"][:, 0], batch["keypoints2d"][:, 0]
    change = seg[:, :, 1:] != seg[:, :, :-1]
    assert change.any()
    assert (edge[:, :, 1:][change] == 1).all() and (edge[:, :, :-1][change] == 1).all()
    change_v = seg[:, 1:] != seg[:, :-1]
    assert (edge[:, 1:][change_v] == 1).all()
    strong = edge > 0.5
    assert key[strong].mean() > 3 * key[~strong].mean()


def test_depth_and_segmentation_are_consistent():
    batch = SyntheticScenes("nyuv2", "test", size=6, resolution=48).render(range(6))
    seg, depth = batch["segment_semantic"], batch["depth_zbuffer"][:, 0]
    # the floor (class 1) is seen from above: it lies in the lower image half on average
    rows = torch.arange(48).view(1, 48, 1).expand_as(seg).float()
    assert rows[seg == 1].mean() > rows[seg == 0].mean()
    # furniture stands in front of the walls it occludes
    furniture = (seg >= 2) & (seg <= 9) & (seg != 7) & (seg != 8)
    assert depth[furniture].mean() < depth[seg == 0].mean()


def test_loader_batches_dicts():
    ds = SyntheticScenes("nyuv2", "train", size=10, resolution=32)
    batches = list(make_loader(ds, 4, shuffle=True, seed=1))
    assert [b["image"].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0]["segment_semantic"].shape == (4, 32, 32)
    again = list(make_loader(ds, 4, shuffle=True, seed=1))
    assert torch.equal(batches[1]["image"], again[1]["image"])
    with pytest.raises(IndexError):
        ds[10]


def test_synthetic_errors_are_user_errors():
    with pytest.raises(UserError, match="'nyuv2' or 'taskonomy'"):
        SyntheticScenes("cityscapes")
    with pytest.raises(UserError, match="unknown split 'dev'"):
        SyntheticScenes("nyuv2", "dev")
    with pytest.raises(UserError, match="unknown dataset 'kitti'"):
        load_dataset("kitti")
    with pytest.raises(UserError, match="needs its directory"):
        load_dataset("nyuv2")


# ---------------------------------------------------------------------- real data fixtures
def _write_nyuv2(root, n=2, h=12, w=16):
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        seg = rng.integers(0, 40, (h, w), dtype=np.uint8)
        seg[0, :3] = 255
        normal = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        depth = rng.uniform(0.5, 9.0, (h, w)).astype(np.float32)
        for sub in ("img", "seg", "normal", "depth"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"img/{i}.png")
        Image.fromarray(seg).save(root / f"seg/{i}.png")
        Image.fromarray(normal).save(root / f"normal/{i}.png")
        np.save(root / f"depth/{i}.npy", depth)
        rows.append([f"img/{i}.png", f"seg/{i}.png", f"normal/{i}.png", f"depth/{i}.npy"])
        truth.append((img, seg, normal, depth))
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": rows, "test": rows}))
    return truth


def test_nyuv2_reader_round_trip(tmp_path):
    truth = _write_nyuv2(tmp_path)
    ds = NYUv2(tmp_path, "test", crop=(12, 16))
    assert len(ds) == 2
    sample = ds[1]
    img, seg, normal, depth = truth[1]
    assert torch.allclose(sample["image"], torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    assert torch.equal(sample["segment_semantic"], torch.from_numpy(seg).long())
    # the authors' loader reads the normal PNG with OpenCV: channels B, G, R (the PNG's reversed)
    bgr_as_opencv_reads_it = np.ascontiguousarray(normal[..., ::-1])
    assert torch.equal(sample["normal"], torch.from_numpy(bgr_as_opencv_reads_it).permute(2, 0, 1).float())
    assert sample["normal"][0, 0, 0] == normal[0, 0, 2]  # channel 0 is the PNG's blue
    assert torch.equal(sample["depth_zbuffer"][0], torch.from_numpy(depth))
    # the paper's losses accept the reader's targets as they are
    resized = NYUv2(tmp_path, "test", crop=(24, 24))[0]
    assert resized["image"].shape == (3, 24, 24) and resized["segment_semantic"].shape == (24, 24)
    batch = next(iter(make_loader(ds, 2)))
    preds = {"segment_semantic": torch.randn(2, 40, 12, 16), "normal": torch.randn(2, 3, 12, 16),
             "depth_zbuffer": torch.rand(2, 1, 12, 16)}
    for task in get_tasks("nyuv2"):
        loss = task.loss(preds[task.name], batch)
        assert loss.shape == (2,) and torch.isfinite(loss).all()


def _write_taskonomy(root, n=2, h=8, w=8):
    rng = np.random.default_rng(1)
    rows, truth = [], []
    (root / "test").mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        seg = rng.integers(0, 18, (h, w), dtype=np.uint8)
        normal = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        depth = rng.integers(0, 60000, (h, w)).astype(np.uint16)
        depth[0, 0] = 65000  # masked
        key = rng.integers(0, 400, (h, w)).astype(np.uint16)
        edge = rng.integers(0, 6000, (h, w)).astype(np.uint16)
        names = [f"{i}_rgb.png", f"{i}_seg.png", f"{i}_normal.png", f"{i}_depth.png", f"{i}_key.png", f"{i}_edge.png"]
        for name, arr in zip(names, (img, seg, normal, depth, key, edge), strict=True):
            Image.fromarray(arr).save(root / "test" / name)
        rows.append(names)
        truth.append((img, seg, normal, depth, key, edge))
    np.save(root / "semseg_prior_factor.npy", np.linspace(0.5, 2.0, 17).astype(np.float32))
    (root / "taskonomy.json").write_text(json.dumps({"test_small": rows}))
    return truth


def test_taskonomy_reader_round_trip(tmp_path):
    truth = _write_taskonomy(tmp_path)
    ds = Taskonomy(tmp_path, "test_small", crop=(256, 256))
    _, seg, normal, depth, key, edge = truth[0]
    s = ds[0]
    up = lambda a: torch.from_numpy(np.kron(a, np.ones((32, 32))))  # noqa: E731  8x8 -> 256x256 nearest
    expected_seg = np.where(seg == 0, 1, seg).astype(np.int64) - 1
    assert torch.equal(s["segment_semantic"], up(expected_seg).long())
    assert torch.allclose(s["depth_zbuffer"][0], up(np.log1p(depth.astype(np.float64)) / np.log(2**16)).float())
    assert s["mask"][0, 0, 0] == 0 and s["mask"].sum() == 256 * 256 - 32 * 32
    assert torch.allclose(s["keypoints2d"][0], up(np.clip(key / 2**16, 0, 0.005) / 0.005 * 2 - 1).float(), atol=1e-6)
    assert torch.allclose(s["edge_texture"][0], up(np.clip(edge / 2**16, 0, 0.08) / 0.08 * 2 - 1).float(), atol=1e-6)
    assert torch.allclose(s["normal"][:, 0, 0], torch.from_numpy(normal[0, 0] / 255 * 2 - 1).float(), atol=1e-6)
    assert ds.class_weights.shape == (17,)
    tasks = get_tasks("taskonomy", class_weights=ds.class_weights)
    batch = next(iter(make_loader(Taskonomy(tmp_path, "test_small"), 2)))
    assert batch["image"].shape == (2, 3, 224, 224)
    for task in tasks:
        pred = torch.randn(2, task.channels, 224, 224)
        assert torch.isfinite(task.loss(pred, batch)).all()


def test_missing_or_malformed_real_data_is_named(tmp_path):
    with pytest.raises(UserError, match=r"NYUv2 data directory .*nope does not exist"):
        NYUv2(tmp_path / "nope")
    with pytest.raises(UserError, match=r"has no nyu_v2_3task\.json"):
        NYUv2(tmp_path)
    (tmp_path / "nyu_v2_3task.json").write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        NYUv2(tmp_path)
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"train": []}))
    with pytest.raises(UserError, match=r"has no split 'test' \(splits: train\)"):
        NYUv2(tmp_path)
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"test": [["a.png", "b.png"]]}))
    with pytest.raises(UserError, match="entry 0 must list 4 file paths"):
        NYUv2(tmp_path)
    (tmp_path / "nyu_v2_3task.json").write_text(json.dumps({"test": [["a.png", "b.png", "c.png", "d.npy"]]}))
    with pytest.raises(UserError, match=r"missing file .*a\.png"):
        NYUv2(tmp_path)[0]
    (tmp_path / "a.png").write_text("not an image")
    with pytest.raises(UserError, match=r"cannot read image .*a\.png"):
        NYUv2(tmp_path)[0]
    tk = tmp_path / "tk"
    tk.mkdir()
    (tk / "taskonomy.json").write_text(json.dumps({"test_small": [["a.png"] * 6]}))
    with pytest.raises(UserError, match=r"no semseg_prior_factor\.npy"):
        Taskonomy(tk)


def test_preview_png(tmp_path):
    out = save_preview(SyntheticScenes("taskonomy", "test", size=2, resolution=32), tmp_path / "p.png", rows=2)
    assert out.stat().st_size > 5000
    assert Image.open(out).size[0] > 500
