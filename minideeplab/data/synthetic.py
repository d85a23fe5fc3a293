"""A synthetic segmentation set on which context matters, written in PASCAL VOC layout.

A class is an object's *shape* (disc, square, triangle, ring, cross, star), never its look. Objects are
coloured and filled with a rough photographic texture (a crop of scikit-image's brick, grass or gravel at a
random zoom, angle and pair of colours; no download), drawn the same way whatever the class; the background is
one or two faintly textured grey regions. So a pixel's neighbourhood says *that* it belongs to an object (colour
and texture are local cues) but not *which* object: only a field of view that sees the outline can name it.
Sizes span a factor of five (equivalent radius 8-40 px on 128 x 128 images, areas equalised across shapes so
size is no cue), objects may overlap, and coloured, textured clutter (small blobs and strokes, smaller than
any object) is labelled background: telling it from a small object also takes a view of its extent.

Why the background is grey: when objects, background and clutter were all coloured and textured alike,
even finding the objects was an "insideness" problem (is this pixel enclosed by an outline?) that the mini
DeepLab trained from scratch on a CPU did not start to solve in 600-1,100 iterations (it predicted background
everywhere, with SGD or Adam); with a grey background it finds objects within a hundred iterations and the
shapes, the lesson of the set, are left to learn.

Image ``i`` of a set is drawn from ``numpy.random.default_rng([seed, i])`` alone, so any image can be
regenerated without the others; the files are byte for byte the same under the locked Pillow (its
libjpeg-turbo and zlib). Regenerate the committed split with::

    python -m minideeplab.data.synthetic --out data/synthetic --seed 0
"""

from __future__ import annotations

import argparse
import math
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minideeplab.data.voc import voc_palette

CLASSES = ("background", "disc", "square", "triangle", "ring", "cross", "star")
TEXTURES = ("brick", "grass", "gravel")          # objects and clutter: rough, fine-grained
BACKGROUND_TEXTURES = ("moon", "cell", "coins", "camera", "coffee", "chelsea", "astronaut", "immunohistochemistry",
                       "rocket")                    # background regions: faint, grey
SIZE = 128                  # images are SIZE x SIZE
RADIUS = (8.0, 40.0)        # equivalent radius sqrt(area / pi) of an object, log-uniform, pixels
N_TRAIN, N_VAL = 300, 100   # image i < N_TRAIN is in train, the next N_VAL in val
JPEG = dict(format="JPEG", quality=90, subsampling="4:2:0", optimize=False, progressive=False)
PNG = dict(format="PNG", optimize=False, compress_level=9)
_SS = 4                     # shapes are rasterised at 4x; a pixel whose 4x4 samples disagree is ignored (255)
_MIN_VISIBLE = 0.6          # an object keeps at least this fraction of its area visible when others overlap it
_MIN_CONTRAST = 100.0       # RGB distance between an object's mean colour and each layer it is drawn over


class Scene(NamedTuple):
    image: np.ndarray   # (H, W, 3) uint8
    label: np.ndarray   # (H, W) uint8: class index, 255 on mixed border pixels
    objects: list       # one dict per object drawn: class, name, radius, center (y, x), angle


@lru_cache(maxsize=None)
def _photos(names) -> tuple:
    """The photographs `names` as float32 gray images in [0, 1]."""
    import skimage.data

    out = []
    for name in names:
        a = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        if a.ndim == 3:  # luma, fixed weights
            a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
        out.append(np.ascontiguousarray(a / 255.0, dtype=np.float32))
    return tuple(out)


def _texture(rng, size, box=None, rough=True):
    """A fill for the pixels box = (y0, y1, x0, x1) of a size x size image (default: all of it), float32
    (y1 - y0, x1 - x0, 3): a photograph crop at random zoom, angle and place, its gray levels normalised,
    then mapped between two random colours. rough: one of TEXTURES at full contrast, coloured (objects,
    clutter); else one of BACKGROUND_TEXTURES, faint and grey (background). Returns (fill, mean colour)."""
    from scipy.ndimage import map_coordinates

    y0, y1, x0, x1 = (0, size, 0, size) if box is None else box
    photos = _photos(TEXTURES if rough else BACKGROUND_TEXTURES)
    photo = photos[int(rng.integers(len(photos)))]
    zoom = 2.0 ** (rng.uniform(0.0, 1.0) if rough else rng.uniform(-0.5, 1.5))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    cy, cx = rng.uniform(0, photo.shape[0]), rng.uniform(0, photo.shape[1])
    c1 = rng.uniform(0.0, 255.0, 3)
    c2 = np.clip(c1 + rng.normal(0.0, 70.0 if rough else 35.0, 3), 0.0, 255.0)
    contrast = rng.uniform(0.6, 1.0) if rough else rng.uniform(0.0, 0.15)
    # elementwise arithmetic only (no BLAS), so the coordinates are the same bits on any CPU
    c = (size - 1) / 2.0
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - c
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - c
    cos, sin = zoom * math.cos(theta), zoom * math.sin(theta)
    coords = np.stack(np.broadcast_arrays(cy + cos * dy - sin * dx, cx + sin * dy + cos * dx))
    g = map_coordinates(photo, coords, order=1, mode="mirror").astype(np.float64)
    z = np.clip((g - g.mean()) / (g.std() + 1e-3), -2.5, 2.5)
    t = np.clip(0.5 + 0.5 * contrast * z, 0.0, 1.0)[..., None]
    fill = c1 + (c2 - c1) * t
    if not rough:  # grey: the mean of the channels
        fill = np.repeat(fill.mean(-1, keepdims=True), 3, -1)
        c1 = c2 = np.full(3, (c1.mean() + c2.mean()) / 2)
    return fill.astype(np.float32), (c1 + c2) / 2.0


def _contrasting_texture(rng, size, under, box=None, rough=True):
    """A texture whose mean colour is at least _MIN_CONTRAST from each colour in `under` (20 tries)."""
    for _ in range(20):
        fill, mean = _texture(rng, size, box, rough)
        if all(np.linalg.norm(mean - u) >= _MIN_CONTRAST for u in under):
            break
    return fill, mean


def _polygon_area(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


def _circle(n=96):
    return np.array([(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n)) for k in range(n)])


def _unit_shape(cls, rng):
    """(outer polygon, hole polygon or None) in unit coordinates, area pi (equivalent radius 1)."""
    name = CLASSES[cls]
    hole = None
    if name == "disc":
        outer = _circle()
    elif name == "square":
        outer = np.array([(1, 1), (-1, 1), (-1, -1), (1, -1)], float)
    elif name == "triangle":
        outer = np.array([(math.cos(a), math.sin(a)) for a in (math.pi / 2 + 2 * math.pi * k / 3 for k in range(3))])
    elif name == "ring":
        outer, hole = _circle(), _circle() * rng.uniform(0.45, 0.65)
    elif name == "cross":
        w = rng.uniform(0.25, 0.38)
        outer = np.array([(1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                          (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w)], float)
    elif name == "star":
        q = rng.uniform(0.38, 0.5)
        outer = np.array([((1 if k % 2 == 0 else q) * math.cos(math.pi / 2 + math.pi * k / 5),
                           (1 if k % 2 == 0 else q) * math.sin(math.pi / 2 + math.pi * k / 5)) for k in range(10)])
    else:
        raise ValueError(f"_unit_shape: no shape for class {cls}")
    area = _polygon_area(outer) - (_polygon_area(hole) if hole is not None else 0.0)
    s = math.sqrt(math.pi / area)
    return outer * s, (hole * s if hole is not None else None)


def _place(p, radius, aspect, angle, cy, cx):
    """Unit polygon -> image coordinates (x, y) at supersampled resolution, as integer tuples."""
    x, y = p[:, 0] * radius * aspect, p[:, 1] * radius / aspect
    c, s = math.cos(angle), math.sin(angle)
    X, Y = cx + c * x - s * y, cy + s * x + c * y
    return [(int(round(_SS * a)), int(round(_SS * b))) for a, b in zip(X.tolist(), Y.tolist())]


def _raster(size, polys, width=0):
    """Rasterise at _SS x: the polygons polys[0] filled with polys[1:] cut out as holes (or, with width > 0,
    polys[0] as a polyline that many pixels wide). Returns (box, mask, cover): box = (y0, y1, x0, x1) the
    pixels it touches, mask (_SS * h, _SS * w) bool the supersampled shape in that box, cover (h, w) float32
    the fraction of each pixel covered."""
    from PIL import Image, ImageDraw

    xs = [x for x, _ in polys[0]]
    ys = [y for _, y in polys[0]]
    pad = int(math.ceil(width * _SS / 2)) + _SS
    y0, y1 = max(0, (min(ys) - pad) // _SS), min(size, (max(ys) + pad) // _SS + 1)
    x0, x1 = max(0, (min(xs) - pad) // _SS), min(size, (max(xs) + pad) // _SS + 1)
    if y1 <= y0 or x1 <= x0:
        return (0, 0, 0, 0), np.zeros((0, 0), bool), np.zeros((0, 0), np.float32)
    h, w = y1 - y0, x1 - x0
    im = Image.new("1", (w * _SS, h * _SS), 0)
    draw = ImageDraw.Draw(im)
    shift = [[(x - x0 * _SS, y - y0 * _SS) for x, y in p] for p in polys]
    if width:
        draw.line(shift[0], fill=1, width=int(round(width * _SS)), joint="curve")
    else:
        draw.polygon(shift[0], fill=1)
        for hole in shift[1:]:
            draw.polygon(hole, fill=0)
    mask = np.asarray(im, dtype=bool)
    count = mask.reshape(h * _SS, w, _SS).sum(axis=2, dtype=np.uint8)
    count = count.reshape(h, _SS, w).sum(axis=1, dtype=np.uint8)
    return (y0, y1, x0, x1), mask, count.astype(np.float32) / (_SS * _SS)


def _paint(image, box, cover, fill):
    y0, y1, x0, x1 = box
    a = cover[..., None]
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - a) + fill * a


def _background(rng, size):
    """1 or 2 faint grey regions (two: split by a straight line through the middle half). Returns (image,
    colours)."""
    image, mean = _texture(rng, size, rough=False)
    colours = [mean]
    if rng.uniform() < 0.5:
        other, mean2 = _contrasting_texture(rng, size, colours, rough=False)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        a = rng.uniform(0.0, 2.0 * math.pi)
        py, px = rng.uniform(size / 4, 3 * size / 4, 2)
        f = (yy - py) * math.cos(a) + (xx - px) * math.sin(a)
        _paint(image, (0, size, 0, size), np.clip(f + 0.5, 0.0, 1.0).astype(np.float32), other)
        colours.append(mean2)
    return image, colours


def _clutter(rng, size, image, colours):
    """1-5 small blobs and strokes (radius 2-6 px, smaller than any object), textured and coloured like the
    objects, labelled background, drawn over the background."""
    for _ in range(int(rng.integers(1, 6))):
        r = math.exp(rng.uniform(math.log(2.0), math.log(6.0)))
        cy, cx = rng.uniform(0, size, 2)
        if rng.uniform() < 0.5:  # an irregular blob
            k = int(rng.integers(5, 10))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            radii = rng.uniform(0.5, 1.0, k)
            poly = np.array([(r_ * math.cos(a), r_ * math.sin(a)) for r_, a in zip(radii.tolist(), angles.tolist())])
            box, _, cover = _raster(size, [_place(poly, r, 1.0, 0.0, cy, cx)])
        else:                    # a stroke: 2-4 points, 1-2 px wide
            k = int(rng.integers(2, 5))
            pts = np.stack([rng.uniform(-1, 1, k), rng.uniform(-1, 1, k)], axis=1) * 4.0
            box, _, cover = _raster(size, [_place(pts, r, 1.0, 0.0, cy, cx)], width=rng.uniform(1.0, 2.0))
        if cover.size:
            fill, _mean = _contrasting_texture(rng, size, colours, box)
            _paint(image, box, cover, fill)


def scene(seed: int = 0, index: int = 0, size: int = SIZE) -> Scene:
    """Image `index` of the set drawn with `seed`: a Scene(image (size, size, 3) uint8, label (size, size)
    uint8, objects). Depends on (seed, index, size) only."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"scene: seed must be an int >= 0, got {seed!r}")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"scene: index must be an int >= 0, got {index!r}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"scene: size must be an int >= 32, got {size!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    image, colours = _background(rng, size)
    _clutter(rng, size, image, colours)

    label_ss = np.zeros((size * _SS, size * _SS), np.uint8)
    owner = np.full((size, size), -1, np.int64)  # the object each pixel (majority) shows, for the overlap rule
    visible, objects = [], []
    lo_r, hi_r = (RADIUS[0] * size / SIZE, RADIUS[1] * size / SIZE)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, len(CLASSES)))
        outer, hole = _unit_shape(cls, rng)
        radius = math.exp(rng.uniform(math.log(lo_r), math.log(hi_r)))
        aspect = 2.0 ** rng.uniform(-0.3, 0.3)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        extent = radius * float(np.max(np.hypot(outer[:, 0], outer[:, 1]))) * max(aspect, 1 / aspect)
        margin = min(0.6 * extent, size / 2)
        for _try in range(10):  # a place where every earlier object keeps most of its area visible
            cy, cx = rng.uniform(margin, size - margin, 2)
            polys = [_place(outer, radius, aspect, angle, cy, cx)]
            if hole is not None:
                polys.append(_place(hole, radius, aspect, angle, cy, cx))
            box, mask, cover = _raster(size, polys)
            y0, y1, x0, x1 = box
            inside = cover >= 0.5
            if inside.sum() < 10:
                continue
            hidden = np.bincount(owner[y0:y1, x0:x1][inside] + 1, minlength=len(visible) + 1)[1:]
            if all(v - h >= _MIN_VISIBLE * v0 for (v0, v), h in zip(visible, hidden)):
                break
        else:
            continue
        fill, mean = _contrasting_texture(rng, size, colours, box)
        _paint(image, box, cover, fill)
        colours.append(mean)
        label_ss[y0 * _SS:y1 * _SS, x0 * _SS:x1 * _SS][mask] = cls
        visible = [(v0, v - h) for (v0, v), h in zip(visible, hidden)] + [(int(inside.sum()),) * 2]
        owner[y0:y1, x0:x1][inside] = len(objects)
        objects.append(dict(cls=cls, name=CLASSES[cls], radius=radius, center=(cy, cx), angle=angle))

    blocks = label_ss.reshape(size, _SS, size, _SS)
    lo, hi = blocks.min(axis=(1, 3)), blocks.max(axis=(1, 3))
    label = np.where(lo == hi, lo, 255).astype(np.uint8)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(image, label, objects)


def image_id(index: int) -> str:
    return f"synth_{index:05d}"


def write_scene(out, index: int, s: Scene) -> None:
    """Write one scene as JPEGImages/<id>.jpg and SegmentationClass/<id>.png (palette, VOC colours)."""
    from PIL import Image

    out = Path(out)
    Image.fromarray(s.image).save(out / "JPEGImages" / f"{image_id(index)}.jpg", **JPEG)
    label = Image.fromarray(s.label)
    label.putpalette(voc_palette().tobytes())
    label.save(out / "SegmentationClass" / f"{image_id(index)}.png", **PNG)


def generate(out, seed: int = 0, n_train: int = N_TRAIN, n_val: int = N_VAL, size: int = SIZE,
             indices=None, progress: bool = True) -> Path:
    """Write the set in PASCAL VOC layout under `out`: JPEGImages/, SegmentationClass/ (palette PNGs),
    ImageSets/Segmentation/{train,val,trainval}.txt and classes.txt. Images 0..n_train-1 are train, the
    next n_val val. `indices`: write only those images (the lists always name the whole set)."""
    from tqdm import tqdm

    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"generate: {name} must be an int >= 0, got {n!r}")
    total = n_train + n_val
    todo = range(total) if indices is None else sorted({int(i) for i in indices})
    bad = [i for i in todo if not 0 <= i < total]
    if bad:
        raise ValueError(f"generate: indices must lie in [0, {total}), got {bad[:5]}")
    out = Path(out)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lists = {"train": range(n_train), "val": range(n_train, total), "trainval": range(total)}
    for split, ids in lists.items():
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{image_id(i)}\n" for i in ids))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    for i in tqdm(todo, desc=f"synthetic scenes -> {out}", unit="img", disable=not progress):
        write_scene(out, i, scene(seed, i, size))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minideeplab.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write (PASCAL VOC layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=N_TRAIN, help="number of train images")
    p.add_argument("--val", type=int, default=N_VAL, help="number of val images")
    p.add_argument("--size", type=int, default=SIZE, help="image height and width")
    a = p.parse_args(argv)
    generate(a.out, a.seed, a.train, a.val, a.size)


if __name__ == "__main__":
    main()
