"""Procedural 3-D indoor scenes, ray-cast in torch: the embedded default data set.

Each scene is a room (floor, walls, ceiling) with furniture built from boxes (tables, chairs,
cabinets, beds, sofas, shelves), spheres (lamps, balls) and thin boxes on the walls (pictures,
windows, doors), seen from a random camera. One vectorised ray cast gives, from the same geometry:

* RGB: albedo x procedural texture (planks, tiles, stripes, patterns) x Lambertian shading from a
  point light with cast shadows, plus ambient light and a little sensor noise;
* depth (z-buffer, metres), surface normals (camera frame: x right, y up, z towards the camera),
  semantic classes (NYUv2's 40 or Taskonomy's 17), texture/occlusion edges and keypoints (a heat
  map of the geometric corners where three faces meet, plus a weak Harris response of the rendered
  texture), so the tasks are correlated through the geometry.

Scene ``i`` of a split depends only on ``(seed, split, i)``: the same scene comes out whatever the
batch it is rendered in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "NYU40_CLASSES",
    "TASKONOMY_CLASSES",
    "SceneSpec",
    "render_scenes",
    "sample_scene",
]

# NYUv2 40-class ids (0-based) used by the generator.
WALL, FLOOR, CABINET, BED, CHAIR, SOFA, TABLE, DOOR, WINDOW, BOOKSHELF, PICTURE = range(11)
CEILING, LAMP, OTHERPROP = 21, 34, 39
NYU40_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
]
TASKONOMY_CLASSES = [
    "background", "bottle", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
]
# NYU40 id -> Taskonomy id for the classes the generator uses (everything else is background)
_NYU_TO_TASKONOMY = {CHAIR: 2, SOFA: 3, BED: 5, TABLE: 6, PICTURE: 8, CABINET: 13, BOOKSHELF: 14,
                     LAMP: 16, OTHERPROP: 15}

# base albedo per class (RGB), jittered per object
_PALETTE = {
    WALL: (0.80, 0.78, 0.72), FLOOR: (0.55, 0.38, 0.22), CEILING: (0.92, 0.92, 0.90), CABINET: (0.45, 0.30, 0.18),
    BED: (0.35, 0.45, 0.70), CHAIR: (0.60, 0.25, 0.15), SOFA: (0.30, 0.55, 0.35), TABLE: (0.65, 0.50, 0.30),
    DOOR: (0.50, 0.35, 0.25), WINDOW: (0.75, 0.88, 0.98), BOOKSHELF: (0.40, 0.28, 0.20), PICTURE: (0.7, 0.6, 0.4),
    LAMP: (0.95, 0.90, 0.60), OTHERPROP: (0.85, 0.20, 0.20),
}
PLAIN, STRIPES, CHECKER, PATTERN = range(4)
MAX_BOXES, MAX_SPHERES = 40, 4
_EPS = 1e-4


@dataclass
class SceneSpec:
    """Parameters of one scene (numpy arrays, one row per primitive)."""

    room: np.ndarray          # (3,) width, height, depth
    cam_pos: np.ndarray       # (3,)
    cam_rot: np.ndarray       # (3, 3) camera-to-world
    focal: float              # focal length in units of the image half-height
    light: np.ndarray         # (3,)
    boxes: np.ndarray         # (n, 4+3+1) centre xyz, half sizes xyz, yaw
    box_info: np.ndarray      # (n, 8) class, r, g, b, texture, scale, contrast, phase
    spheres: np.ndarray       # (m, 4) centre xyz, radius
    sphere_info: np.ndarray   # (m, 8)
    surfaces: np.ndarray      # (3, 8) floor, ceiling, wall info rows


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _info(rng: np.random.Generator, cls: int, texture: int | None = None, jitter: float = 0.12) -> list[float]:
    base = np.array(_PALETTE[cls])
    rgb = np.clip(base + rng.uniform(-jitter, jitter, 3), 0.05, 1.0)
    if texture is None:
        texture = int(rng.choice([PLAIN, PLAIN, STRIPES, CHECKER]))
    return [cls, *rgb, texture, rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.45), rng.uniform(0, 2 * math.pi)]


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.boxes: list[list[float]] = []
        self.box_info: list[list[float]] = []
        self.spheres: list[list[float]] = []
        self.sphere_info: list[list[float]] = []

    def box(self, centre, half, yaw: float, info: list[float]) -> None:
        if len(self.boxes) < MAX_BOXES:
            self.boxes.append([*centre, *half, yaw])
            self.box_info.append(info)

    def part(self, origin, yaw: float, local_centre, half, info) -> None:
        """A box given in the local frame of a piece of furniture at ``origin`` rotated by ``yaw``."""
        offset = _rot_y(yaw) @ np.asarray(local_centre, dtype=float)
        self.box(np.asarray(origin) + offset, half, yaw, info)

    def sphere(self, centre, radius: float, info: list[float]) -> None:
        if len(self.spheres) < MAX_SPHERES:
            self.spheres.append([*centre, radius])
            self.sphere_info.append(info)


def _furniture(b: _Builder, kind: str, x: float, z: float, yaw: float) -> float:
    """Add one piece of furniture standing on the floor at (x, z); returns its top height."""
    rng = b.rng
    o = (x, 0.0, z)
    if kind == "table":
        w, d, h = rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.55), rng.uniform(0.65, 0.8)
        info = _info(rng, TABLE)
        b.part(o, yaw, (0, h - 0.03, 0), (w, 0.03, d), info)
        for sx in (-1, 1):
            for sz in (-1, 1):
                b.part(o, yaw, (sx * (w - 0.05), (h - 0.06) / 2, sz * (d - 0.05)), (0.03, (h - 0.06) / 2, 0.03), info)
        return h
    if kind == "chair":
        s, h = rng.uniform(0.2, 0.26), rng.uniform(0.42, 0.5)
        info = _info(rng, CHAIR)
        b.part(o, yaw, (0, h, 0), (s, 0.03, s), info)
        b.part(o, yaw, (0, h + 0.25, -s + 0.02), (s, 0.25, 0.02), info)
        for sx in (-1, 1):
            for sz in (-1, 1):
                b.part(o, yaw, (sx * (s - 0.03), h / 2, sz * (s - 0.03)), (0.02, h / 2, 0.02), info)
        return h
    if kind == "cabinet":
        w, d, h = rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.3), rng.uniform(0.4, 1.0)
        b.part(o, yaw, (0, h, 0), (w, h, d), _info(rng, CABINET, STRIPES))
        return 2 * h
    if kind == "shelf":
        w, d, h = rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.22), rng.uniform(0.7, 1.0)
        info = _info(rng, BOOKSHELF)
        for sx in (-1, 1):
            b.part(o, yaw, (sx * w, h, 0), (0.02, h, d), info)
        for k in range(4):
            b.part(o, yaw, (0, 0.02 + k * (2 * h - 0.04) / 3, 0), (w, 0.02, d), info)
        return 2 * h
    if kind == "bed":
        w, d, h = rng.uniform(0.7, 0.95), rng.uniform(0.9, 1.1), rng.uniform(0.22, 0.3)
        b.part(o, yaw, (0, h, 0), (w, h, d), _info(rng, BED, CHECKER))
        b.part(o, yaw, (0, 0.5, -d - 0.04), (w, 0.5, 0.04), _info(rng, BED, PLAIN))
        return 2 * h
    if kind == "sofa":
        w, d = rng.uniform(0.7, 1.0), rng.uniform(0.35, 0.45)
        info = _info(rng, SOFA)
        b.part(o, yaw, (0, 0.21, 0), (w, 0.21, d), info)
        b.part(o, yaw, (0, 0.45, -d + 0.08), (w, 0.45, 0.08), info)
        for sx in (-1, 1):
            b.part(o, yaw, (sx * (w - 0.08), 0.3, 0), (0.08, 0.3, d), info)
        return 0.42
    raise ValueError(kind)


_KINDS = ("table", "chair", "cabinet", "shelf", "bed", "sofa")


def sample_scene(seed: int, split: int, index: int) -> SceneSpec:
    """Draw the parameters of scene ``index`` of split ``split`` (deterministic)."""
    rng = np.random.default_rng([seed, split, index])
    width, height, depth = rng.uniform(4.0, 6.5), rng.uniform(2.5, 3.1), rng.uniform(4.5, 7.5)
    b = _Builder(rng)
    # furniture on the floor, in front of the camera
    for _ in range(rng.integers(3, 7)):
        kind = str(rng.choice(_KINDS))
        x = rng.uniform(-width / 2 + 0.8, width / 2 - 0.8)
        z = rng.uniform(2.0, depth - 0.8)
        yaw = float(rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2])) + rng.uniform(-0.3, 0.3)
        top = _furniture(b, kind, x, z, yaw)
        if kind == "table" and rng.random() < 0.6:
            r = rng.uniform(0.08, 0.15)
            b.sphere((x + rng.uniform(-0.2, 0.2), top + r, z + rng.uniform(-0.1, 0.1)), r, _info(rng, LAMP, PLAIN))
    for _ in range(rng.integers(0, 3)):  # balls on the floor
        r = rng.uniform(0.12, 0.3)
        b.sphere((rng.uniform(-width / 2 + 0.5, width / 2 - 0.5), r, rng.uniform(1.5, depth - 0.5)), r,
                 _info(rng, OTHERPROP, PLAIN, jitter=0.3))
    # things on the walls: (class, width, height, centre height)
    decor = [(PICTURE, rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.45), rng.uniform(1.3, 1.9))
             for _ in range(rng.integers(0, 3))]
    if rng.random() < 0.6:
        decor.append((WINDOW, rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.7), rng.uniform(1.3, 1.7)))
    if rng.random() < 0.5:
        decor.append((DOOR, 0.45, 1.0, 1.0))
    for cls, w, h, y in decor:
        texture = PATTERN if cls == PICTURE else PLAIN
        info = _info(rng, cls, texture, jitter=0.3 if cls == PICTURE else 0.08)
        wall = rng.integers(0, 3)  # back, left, right
        if wall == 0:
            b.box((rng.uniform(-width / 2 + w + 0.1, width / 2 - w - 0.1), y, depth - 0.02), (w, h, 0.03), 0.0, info)
        else:
            side = -1 if wall == 1 else 1
            b.box((side * (width / 2 - 0.02), y, rng.uniform(1.5, depth - w - 0.2)), (0.03, h, w), 0.0, info)
    cam = np.array([rng.uniform(-width / 5, width / 5), rng.uniform(1.2, 1.7), rng.uniform(0.25, 0.7)])
    rot = _rot_y(rng.uniform(-0.45, 0.45)) @ _rot_x(rng.uniform(0.15, 0.45))  # look down a little
    fov = math.radians(rng.uniform(55, 70))
    light = np.array([rng.uniform(-width / 3, width / 3), height - 0.15, rng.uniform(1.5, depth - 1.0)])
    surfaces = np.array([_info(rng, FLOOR, int(rng.choice([STRIPES, CHECKER]))),
                         _info(rng, CEILING, PLAIN, 0.03),
                         _info(rng, WALL, int(rng.choice([PLAIN, STRIPES])), 0.1)])
    surfaces[0, 5] = rng.uniform(0.15, 0.35)  # plank / tile size
    surfaces[0, 6] = rng.uniform(0.25, 0.5)
    surfaces[2, 6] = rng.uniform(0.05, 0.15)  # wallpaper is subtle
    return SceneSpec(
        room=np.array([width, height, depth]), cam_pos=cam, cam_rot=rot, focal=1.0 / math.tan(fov / 2),
        light=light,
        boxes=np.array(b.boxes, dtype=float).reshape(-1, 7), box_info=np.array(b.box_info, dtype=float).reshape(-1, 8),
        spheres=np.array(b.spheres, dtype=float).reshape(-1, 4),
        sphere_info=np.array(b.sphere_info, dtype=float).reshape(-1, 8), surfaces=surfaces,
    )


# ====================================================================== ray casting
def _stack(specs: list[SceneSpec]) -> dict[str, torch.Tensor]:
    """Pad the primitives of several scenes into dense tensors (invalid rows: zero size)."""
    n = len(specs)
    nb = max(1, max(len(s.boxes) for s in specs))
    ns = max(1, max(len(s.spheres) for s in specs))
    boxes = np.zeros((n, nb, 7))
    box_info = np.zeros((n, nb, 8))
    box_valid = np.zeros((n, nb), dtype=bool)
    spheres = np.zeros((n, ns, 4))
    sphere_info = np.zeros((n, ns, 8))
    sphere_valid = np.zeros((n, ns), dtype=bool)
    for i, s in enumerate(specs):
        boxes[i, : len(s.boxes)] = s.boxes
        box_info[i, : len(s.boxes)] = s.box_info
        box_valid[i, : len(s.boxes)] = True
        spheres[i, : len(s.spheres)] = s.spheres
        sphere_info[i, : len(s.spheres)] = s.sphere_info
        sphere_valid[i, : len(s.spheres)] = True
    t = lambda a, dt=torch.float32: torch.from_numpy(np.asarray(a)).to(dt)  # noqa: E731
    return {
        "room": t([s.room for s in specs]), "cam_pos": t([s.cam_pos for s in specs]),
        "cam_rot": t([s.cam_rot for s in specs]), "focal": t([s.focal for s in specs]),
        "light": t([s.light for s in specs]), "boxes": t(boxes), "box_info": t(box_info),
        "box_valid": t(box_valid, torch.bool), "spheres": t(spheres), "sphere_info": t(sphere_info),
        "sphere_valid": t(sphere_valid, torch.bool), "surfaces": t([s.surfaces for s in specs]),
    }


def _slab(o, d, boxes):
    """Slab test of rays against yawed boxes (broadcasting): entry/exit distance, entry axis and
    the ray direction in the box frame."""
    centre, half, yaw = boxes[..., :3], boxes[..., 3:6], boxes[..., 6]
    c, s = torch.cos(yaw), torch.sin(yaw)
    rel = o - centre
    ol = torch.stack([c * rel[..., 0] - s * rel[..., 2], rel[..., 1], s * rel[..., 0] + c * rel[..., 2]], -1)
    dl = torch.stack([c * d[..., 0] - s * d[..., 2], d[..., 1], s * d[..., 0] + c * d[..., 2]], -1)
    dl = torch.where(dl.abs() < 1e-9, torch.full_like(dl, 1e-9), dl)
    t1, t2 = (-half - ol) / dl, (half - ol) / dl
    tnear, axis = torch.minimum(t1, t2).max(-1)
    tfar = torch.maximum(t1, t2).min(-1).values
    return tnear, tfar, axis, dl


def _box_normal(boxes, axis, dl):
    """World normal of the entry face (axis, direction in the box frame) of yawed boxes."""
    yaw = boxes[..., 6]
    c, s = torch.cos(yaw), torch.sin(yaw)
    sign = -torch.sign(dl.gather(-1, axis[..., None]))[..., 0]
    nl = F.one_hot(axis, 3).to(dl.dtype) * sign[..., None]
    return torch.stack([c * nl[..., 0] + s * nl[..., 2], nl[..., 1], -s * nl[..., 0] + c * nl[..., 2]], -1)


def _first_box_hit(origin, d, boxes, valid, t_max=None):
    """First box hit by rays that share one origin per scene: origin (S, 3), d (S, P, 3).

    Candidate ray-box pairs come from a cheap bounding-sphere test (one batched matmul); the exact
    slab test runs on those pairs only. Returns t (S, P) (inf: no hit) and the box index (-1)."""
    s_, p_, _ = d.shape
    radius = boxes[..., 3:6].norm(dim=-1)  # (S, N)
    rel = boxes[..., :3] - origin[:, None]
    proj = torch.bmm(d, rel.transpose(1, 2))  # (S, P, N)
    dist2 = (rel * rel).sum(-1)[:, None] - proj * proj
    cand = (dist2 <= (radius * radius)[:, None]) & (proj > -radius[:, None]) & valid[:, None]
    if t_max is not None:
        cand &= proj - radius[:, None] < t_max[..., None]
    si, pi, ni = cand.nonzero(as_tuple=True)
    tnear, tfar, _, _ = _slab(origin[si], d[si, pi], boxes[si, ni])
    hit = (tfar >= tnear) & (tnear > _EPS)
    if t_max is not None:
        hit &= tnear < t_max[si, pi]
    t = torch.where(hit, tnear, torch.full_like(tnear, math.inf))
    flat = si * p_ + pi
    tmin = torch.full((s_ * p_,), math.inf).scatter_reduce(0, flat, t, "amin")
    win = hit & (t == tmin[flat])
    idx = torch.full((s_ * p_,), -1, dtype=torch.long).scatter_reduce(0, flat[win], ni[win], "amax")
    return tmin.view(s_, p_), idx.view(s_, p_)


def _intersect_spheres(origin, d, spheres, valid):
    """Ray-sphere distances (S, P, M) (inf: no hit) for rays sharing one origin per scene."""
    centre, radius = spheres[..., :3], spheres[..., 3]
    rel = origin[:, None] - centre  # (S, M, 3)
    bq = torch.bmm(d, rel.transpose(1, 2))  # (S, P, M)
    cq = (rel * rel).sum(-1)[:, None] - (radius * radius)[:, None]
    disc = bq * bq - cq
    t = -bq - torch.sqrt(disc.clamp_min(0))
    hit = (disc > 0) & (t > _EPS) & valid[:, None]
    return torch.where(hit, t, torch.full_like(t, math.inf))


def _room_exit(o, d, room):
    """Rays start inside the room; distance to the wall they leave through, its normal and which
    surface it is (0 floor, 1 ceiling, 2 wall)."""
    w, h, dep = room[:, 0], room[:, 1], room[:, 2]
    lo = torch.stack([-w / 2, torch.zeros_like(w), torch.zeros_like(w)], -1)[:, None]
    hi = torch.stack([w / 2, h, dep], -1)[:, None]
    dd = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t_axis = torch.where(dd > 0, (hi - o) / dd, (lo - o) / dd)
    t, axis = t_axis.min(-1)
    sign = -torch.sign(dd.gather(-1, axis[..., None]))[..., 0]
    normal = F.one_hot(axis, 3).to(o.dtype) * sign[..., None]
    surface = torch.where(axis == 1, torch.where(sign > 0, 0, 1), torch.full_like(axis, 2))
    return t, normal, surface


def _texture(p, n, info):
    """Procedural texture factor (S, P) from hit points, normals and per-pixel info rows."""
    kind, scale, contrast, phase = info[..., 4], info[..., 5].clamp_min(0.05), info[..., 6], info[..., 7]
    ax = n.abs().argmax(-1)
    # texture coordinates: the two world axes orthogonal to the dominant normal axis
    u = torch.where(ax == 0, p[..., 2], p[..., 0])
    v = torch.where(ax == 1, p[..., 2], p[..., 1])
    stripes = 0.5 + 0.5 * torch.sign(torch.sin(2 * math.pi * u / scale + phase))
    checker = ((torch.floor(u / scale) + torch.floor(v / scale)) % 2)
    pattern = 0.5 + 0.25 * (torch.sin(u * 23.0 + phase) + torch.sin(v * 31.0 - 2 * phase) * torch.cos(u * 11.0))
    tex = torch.ones_like(u)
    tex = torch.where(kind == STRIPES, 1 - contrast * stripes, tex)
    tex = torch.where(kind == CHECKER, 1 - contrast * checker, tex)
    tex = torch.where(kind == PATTERN, 0.35 + 0.9 * pattern, tex)
    return tex


def _sobel(img: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of (S, 1, H, W) images."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=img.dtype) / 8
    weight = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), weight)
    return g.pow(2).sum(1, keepdim=True).sqrt()


def _harris(gray: torch.Tensor, k: float = 0.05) -> torch.Tensor:
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=gray.dtype) / 8
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), torch.stack([kx, kx.T])[:, None])
    ix, iy = g[:, :1], g[:, 1:]
    prod = torch.cat([ix * ix, iy * iy, ix * iy], 1)
    x = torch.arange(5, dtype=gray.dtype) - 2
    gauss = torch.exp(-(x**2) / 2)
    gauss = (gauss[:, None] * gauss[None]) / gauss.sum() ** 2
    s = F.conv2d(F.pad(prod, (2, 2, 2, 2), mode="replicate"), gauss.expand(3, 1, 5, 5).contiguous(), groups=3)
    return s[:, 0] * s[:, 1] - s[:, 2] ** 2 - k * (s[:, 0] + s[:, 1]) ** 2


def _distinct_3x3(ids: torch.Tensor) -> torch.Tensor:
    """Number of distinct values in each pixel's 3x3 neighbourhood of an (S, 1, H, W) id map."""
    padded = F.pad(ids, (1, 1, 1, 1), mode="replicate")
    h, w = ids.shape[-2:]
    shifts = torch.cat([padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)], 1)
    ordered = shifts.sort(1).values
    return 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(1, keepdim=True)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, round(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))


def _cast(origin, d, sc):
    """Closest hit of each camera ray: t, world normal, info row and primitive id."""
    o = origin[:, None].expand_as(d)
    t_room, n_room, surface = _room_exit(o, d, sc["room"])
    t_box, box_idx = _first_box_hit(origin, d, sc["boxes"], sc["box_valid"])
    t_sph, sph_idx = _intersect_spheres(origin, d, sc["spheres"], sc["sphere_valid"]).min(-1)
    win_sph = sc["spheres"].gather(1, sph_idx[..., None].expand(*sph_idx.shape, 4))
    n_sph = (o + t_sph.clamp_max(1e6)[..., None] * d - win_sph[..., :3]) / win_sph[..., 3:].clamp_min(1e-6)
    # normal of the box each ray hits (recomputed for the winner only)
    win_box = sc["boxes"].gather(1, box_idx.clamp_min(0)[..., None].expand(*box_idx.shape, 7))
    _, _, axis, dl = _slab(o, d, win_box)
    n_box = _box_normal(win_box, axis, dl)
    t, which = torch.stack([t_room, t_box, t_sph], -1).min(-1)  # 0 room, 1 box, 2 sphere
    normal = torch.where((which == 0)[..., None], n_room, torch.where((which == 1)[..., None], n_box, n_sph))
    surf_info = sc["surfaces"].gather(1, surface[..., None].expand(*surface.shape, 8))
    box_info = sc["box_info"].gather(1, box_idx.clamp_min(0)[..., None].expand(*box_idx.shape, 8))
    sph_info = sc["sphere_info"].gather(1, sph_idx[..., None].expand(*sph_idx.shape, 8))
    info = torch.where((which == 0)[..., None], surf_info, torch.where((which == 1)[..., None], box_info, sph_info))
    prim_id = torch.where(which == 0, -1 - surface, torch.where(which == 1, box_idx, MAX_BOXES + sph_idx))
    return t, normal, info, prim_id


def _occluded(p, light, sc):
    """Whether the segment from the light to each hit point is blocked by an object."""
    to_p = p - light[:, None]
    dist = to_p.norm(dim=-1)
    d = to_p / dist[..., None]
    t_max = dist - 2e-3
    t_box, _ = _first_box_hit(light, d, sc["boxes"], sc["box_valid"], t_max)
    t_sph = _intersect_spheres(light, d, sc["spheres"], sc["sphere_valid"]).min(-1).values
    return (t_box < t_max) | (t_sph < t_max)


@torch.no_grad()
def render_scenes(specs: list[SceneSpec], resolution: int | tuple[int, int], *, noise_seed: int | None = None,
                  noise: float = 0.01) -> dict[str, torch.Tensor]:
    """Render scenes to RGB and every task's ground truth (float32, CPU).

    Returns ``image`` (S, 3, H, W) in [0, 1], ``depth`` (S, 1, H, W) metres, ``normal`` (S, 3, H, W)
    unit vectors in the camera frame, ``nyu_class``/``taskonomy_class`` (S, H, W) int64,
    ``edge`` and ``keypoint`` (S, 1, H, W) in [0, 1], ``instance`` (S, H, W) primitive ids.
    """
    hgt, wid = (resolution, resolution) if isinstance(resolution, int) else resolution
    sc = _stack(specs)
    s = len(specs)
    ys, xs = torch.meshgrid(torch.arange(hgt, dtype=torch.float32), torch.arange(wid, dtype=torch.float32),
                            indexing="ij")
    u = ((xs + 0.5) - wid / 2) / (hgt / 2)
    v = -((ys + 0.5) - hgt / 2) / (hgt / 2)
    d_cam = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3)
    d_cam = d_cam * torch.stack([1 / sc["focal"], 1 / sc["focal"], torch.ones(s)], -1)[:, None]
    d_cam = F.normalize(d_cam, dim=-1)  # (S, P, 3)
    rot = sc["cam_rot"]
    d = torch.einsum("sij,spj->spi", rot, d_cam)
    origin = sc["cam_pos"]

    t, normal, info, prim_id = _cast(origin, d, sc)
    p = origin[:, None] + t[..., None] * d
    depth = t * d_cam[..., 2]
    # shading
    to_light = F.normalize(sc["light"][:, None] - p, dim=-1)
    lambert = (normal * to_light).sum(-1).clamp_min(0)
    shadow = _occluded(p, sc["light"], sc).to(p.dtype)
    dist2 = (sc["light"][:, None] - p).pow(2).sum(-1)
    falloff = 6.0 / (3.0 + dist2)
    albedo = info[..., 1:4] * _texture(p, normal, info)[..., None]
    light = 0.28 + 0.85 * lambert * (1 - 0.75 * shadow) * falloff
    rgb = albedo * light[..., None]
    # window panes glow
    rgb = torch.where((info[..., 0] == WINDOW)[..., None], albedo * 1.1, rgb)

    def img(x, c):
        return x.reshape(s, hgt, wid, c).permute(0, 3, 1, 2).contiguous()

    rgb = img(rgb, 3)
    if noise_seed is not None and noise > 0:
        gen = torch.Generator().manual_seed(noise_seed)
        rgb = rgb + noise * torch.randn(rgb.shape, generator=gen)
    rgb = rgb.clamp(0, 1)
    # camera-frame normals: x right, y up, z towards the camera
    n_cam = F.normalize(torch.einsum("sji,spj->spi", rot, normal) * torch.tensor([1.0, 1.0, -1.0]), dim=-1)
    nyu = info[..., 0].round().long()
    lut = torch.zeros(40, dtype=torch.long)
    for k, v_ in _NYU_TO_TASKONOMY.items():
        lut[k] = v_
    instance = prim_id.reshape(s, hgt, wid)
    # edges: occlusion/object boundaries (1) and texture edges (Sobel of the albedo), in [0, 1]
    albedo_gray = img(albedo.mean(-1, keepdim=True), 1)
    tex_edge = (_sobel(albedo_gray) * 6).clamp(0, 1)
    inst = instance[:, None].float()
    boundary = torch.zeros_like(inst, dtype=torch.bool)
    boundary[..., :, 1:] |= inst[..., :, 1:] != inst[..., :, :-1]
    boundary[..., :, :-1] |= inst[..., :, 1:] != inst[..., :, :-1]
    boundary[..., 1:, :] |= inst[..., 1:, :] != inst[..., :-1, :]
    boundary[..., :-1, :] |= inst[..., 1:, :] != inst[..., :-1, :]
    edge = torch.where(boundary, torch.ones_like(tex_edge), tex_edge)
    # keypoints: geometric corners (pixels whose 3x3 neighbourhood sees three or more faces: a
    # primitive and the dominant axis of its normal) as a blurred heat map, plus a weak Harris
    # saliency of the rendered texture; in [0, 1]
    axis = n_cam.abs().argmax(-1) * 2 + (n_cam.gather(-1, n_cam.abs().argmax(-1, keepdim=True))[..., 0] > 0).long()
    face = (instance.reshape(s, -1) * 8 + axis).reshape(s, 1, hgt, wid).float()
    corner = (_distinct_3x3(face) >= 3).float()
    heat = _blur(corner, sigma=2.0)
    harris = _harris(rgb.mean(1, keepdim=True))[:, None]
    keypoint = (heat * 3.0 + 0.1 * torch.tanh(harris.clamp_min(0) * 4e4)).clamp(0, 1)
    return {
        "image": rgb,
        "depth": img(depth[..., None], 1),
        "normal": img(n_cam, 3),
        "nyu_class": nyu.reshape(s, hgt, wid),
        "taskonomy_class": lut[nyu].reshape(s, hgt, wid),
        "edge": edge,
        "keypoint": keypoint,
        "instance": instance,
    }
