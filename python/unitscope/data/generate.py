"""make_concept_dataset: a generated Broden-format dataset for tests, demos and benchmarks, made the way
Broden's sources are: scene photographs (colored objects with parts on scene backgrounds; a scene
label per image, as ADE20K's) and full-frame texture photographs (one texture per image, as DTD's).
The same seed always writes the same bytes.

Each scene image is drawn as a map of region ids (PIL), then every label map and the RGB image are
looked up from the region table, so labels and pixels agree exactly.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {  # Broden-style color names -> RGB
    "black": (20, 20, 24), "blue": (40, 70, 200), "brown": (120, 75, 35), "green": (50, 150, 60),
    "grey": (128, 128, 128), "orange": (240, 140, 30), "pink": (240, 150, 190), "purple": (120, 50, 160),
    "red": (210, 35, 35), "white": (240, 240, 240), "yellow": (240, 220, 50),
}
BACKGROUNDS = ["sky", "sand", "grass", "road", "wall", "floor"]
OBJECTS = ["house", "car", "tree", "ball", "kite", "sun"]
PARTS = ["roof", "door", "window", "wheel", "trunk", "foliage"]
# scene -> (top region, its colors, bottom region, its colors, horizon fraction). Twelve scenes, so that
# each is labelled on about 1/18 of the images: a whole-image label on a share s of the images caps a
# unit's IoU (mask: 0.5% of all pixels) near 0.005 / s, which must clear the detector threshold 0.04
SCENES = {
    "beach": ("sky", ["blue", "white"], "sand", ["yellow"], 0.45),
    "field": ("sky", ["blue"], "grass", ["green"], 0.4),
    "night": ("sky", ["black", "purple"], "road", ["grey", "black"], 0.6),
    "room": ("wall", ["pink", "white"], "floor", ["brown", "orange"], 0.65),
    "desert": ("sky", ["white"], "sand", ["orange", "brown"], 0.3),
    "street": ("sky", ["blue"], "road", ["grey"], 0.5),
    "dusk": ("sky", ["purple", "pink"], "grass", ["green", "black"], 0.5),
    "kitchen": ("wall", ["white", "yellow"], "floor", ["grey", "black"], 0.6),
    "bedroom": ("wall", ["blue", "purple"], "floor", ["brown"], 0.7),
    "parking": ("sky", ["grey"], "road", ["black"], 0.35),
    "garden": ("wall", ["brown", "red"], "grass", ["green"], 0.55),
    "sunset": ("sky", ["orange", "red"], "sand", ["brown", "black"], 0.55),
}
TEXTURES = ["striped", "dotted", "checkered", "blotchy", "zigzagged"]
CATEGORIES = ["color", "object", "part", "scene", "texture"]
TEXTURE_EVERY = 3  # image i is a full-frame texture image when i % 3 == 2, a scene image otherwise


def _vocabulary() -> list[tuple[str, str]]:
    """(name, category) per label number; number 0 is the empty label (no row in label.csv)."""
    vocab = [("-", "")]
    vocab += [(f"{c}-c", "color") for c in COLORS]
    vocab += [(o, "object") for o in BACKGROUNDS + OBJECTS]
    vocab += [(p, "part") for p in PARTS]
    vocab += [(f"{s}-s", "scene") for s in SCENES]
    vocab += [(t, "texture") for t in TEXTURES]
    return vocab


VOCAB = _vocabulary()
NUMBER = {name: i for i, (name, _) in enumerate(VOCAB)}


class _Canvas:
    """A region-id map plus the region table: region -> (object, part, color name, rgb)."""

    def __init__(self, size: int):
        self.ids = Image.new("L", (size, size), 0)
        self.draw = ImageDraw.Draw(self.ids)
        self.table = [(0, 0, 0, (0, 0, 0))]

    def region(self, obj: str, part: str | None, color: str, rng) -> int:
        jitter = rng.integers(-18, 19, size=3)
        rgb = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLORS[color], jitter))
        self.table.append((NUMBER[obj], NUMBER[part] if part else 0, NUMBER[f"{color}-c"], rgb))
        return len(self.table) - 1


def _texture(kind: str, size: int, rng) -> np.ndarray:
    """A float pattern in [-1, 1] of shape (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(6, 16) * size / 224
    if kind == "striped":
        theta = rng.uniform(0, np.pi)
        return np.sign(np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period))
    if kind == "dotted":
        fy, fx = (yy % period) - period / 2, (xx % period) - period / 2
        return np.where(fy * fy + fx * fx < (period / 4) ** 2, -1.0, 0.4)
    if kind == "checkered":
        return ((np.floor(yy / period) + np.floor(xx / period)) % 2) * 2 - 1.0
    if kind == "blotchy":
        small = rng.uniform(0, 255, size=(max(2, size // 24), max(2, size // 24))).astype(np.uint8)
        big = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.float64)
        return (big - big.mean()) / (np.abs(big - big.mean()).max() + 1e-9)
    if kind == "zigzagged":
        tri = np.abs((xx / period) % 2 - 1) * period
        return np.sign(np.sin(2 * np.pi * (yy + tri) / period))
    return np.zeros((size, size))


def _draw_object(cv: _Canvas, kind: str, rng, size: int, horizon: int):
    s = size
    w = int(rng.uniform(0.22, 0.42) * s)
    x0 = int(rng.uniform(0, s - w))
    if kind == "sun":
        r = w // 4
        cx, cy = x0 + w // 2, int(rng.uniform(r, max(r + 1, horizon - r)))
        cv.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=cv.region("sun", None, str(rng.choice(["yellow", "orange"])), rng))
        return
    base = int(rng.uniform(horizon + 0.1 * (s - horizon), s - 2))
    if kind == "house":
        h = int(w * rng.uniform(0.6, 0.9))
        top = base - h
        cv.draw.rectangle([x0, top, x0 + w, base], fill=cv.region("house", None, str(rng.choice(["white", "yellow", "grey", "red"])), rng))
        cv.draw.polygon([(x0 - w // 10, top), (x0 + w + w // 10, top), (x0 + w // 2, top - h // 2)],
                        fill=cv.region("house", "roof", str(rng.choice(["red", "brown"])), rng))
        dw = max(2, w // 5)
        cv.draw.rectangle([x0 + w // 2 - dw // 2, base - int(h * 0.5), x0 + w // 2 + dw // 2, base],
                          fill=cv.region("house", "door", "brown", rng))
        win = cv.region("house", "window", str(rng.choice(["blue", "white"])), rng)
        for wx in (x0 + w // 8, x0 + w - w // 8 - dw):
            cv.draw.rectangle([wx, top + h // 5, wx + dw, top + h // 5 + dw], fill=win)
    elif kind == "car":
        h = int(w * 0.3)
        top = base - h - w // 8
        cv.draw.rectangle([x0, top, x0 + w, top + h], fill=cv.region("car", None, str(rng.choice(["red", "blue", "yellow", "green", "orange", "purple", "pink"])), rng))
        cv.draw.polygon([(x0 + w // 5, top), (x0 + w * 4 // 5, top), (x0 + w * 2 // 3, top - h * 2 // 3), (x0 + w // 3, top - h * 2 // 3)],
                        fill=cv.region("car", "window", str(rng.choice(["blue", "white"])), rng))
        r = w // 8
        wheel = cv.region("car", "wheel", "black", rng)
        for cx in (x0 + w // 5, x0 + w * 4 // 5):
            cv.draw.ellipse([cx - r, top + h - r, cx + r, top + h + r], fill=wheel)
    elif kind == "tree":
        tw = max(2, w // 6)
        h = int(w * rng.uniform(1.0, 1.5))
        cv.draw.rectangle([x0 + w // 2 - tw // 2, base - h // 2, x0 + w // 2 + tw // 2, base], fill=cv.region("tree", "trunk", "brown", rng))
        cv.draw.ellipse([x0, base - h, x0 + w, base - h // 3], fill=cv.region("tree", "foliage", "green", rng))
    elif kind == "ball":
        r = w // 3
        cx = x0 + w // 2
        cv.draw.ellipse([cx - r, base - 2 * r, cx + r, base], fill=cv.region("ball", None, str(rng.choice(list(COLORS))), rng))
    elif kind == "kite":
        cx, cy, r = x0 + w // 2, int(rng.uniform(w // 2, max(w // 2 + 1, horizon))), w // 3
        cv.draw.polygon([(cx, cy - r), (cx + r * 2 // 3, cy), (cx, cy + r), (cx - r * 2 // 3, cy)],
                        fill=cv.region("kite", None, str(rng.choice(["red", "purple", "orange", "pink", "yellow"])), rng))


def _scene_image(rng, size: int, label_size: int):
    """A scene photograph: two background regions and 1-3 objects; color, object, part maps."""
    scene = str(rng.choice(list(SCENES)))
    top, top_colors, bottom, bottom_colors, hfrac = SCENES[scene]
    horizon = int(size * (hfrac + rng.uniform(-0.08, 0.08)))
    cv = _Canvas(size)
    cv.draw.rectangle([0, 0, size, horizon], fill=cv.region(top, None, str(rng.choice(top_colors)), rng))
    cv.draw.rectangle([0, horizon, size, size], fill=cv.region(bottom, None, str(rng.choice(bottom_colors)), rng))
    outdoor = top == "sky"
    kinds = ["house", "car", "tree", "ball", "kite"] if outdoor else ["ball", "kite"]
    kinds += ["sun"] if scene in ("beach", "field", "desert") else []
    for _ in range(int(rng.integers(1, 4))):
        _draw_object(cv, str(rng.choice(kinds)), rng, size, horizon)
    ids = np.asarray(cv.ids)
    table = cv.table
    img = np.array([t[3] for t in table], dtype=np.float64)[ids]
    small = np.asarray(cv.ids.resize((label_size, label_size), Image.NEAREST))
    maps = {
        "color": np.array([t[2] for t in table])[small],
        "object": np.array([t[0] for t in table])[small],
        "part": np.array([t[1] for t in table])[small],
    }
    return img, maps, {"scene": f"{scene}-s"}


def _texture_image(rng, size: int, label_size: int):
    """A full-frame texture photograph (as DTD's in Broden): one pattern of two colors over the whole
    image; its texture label and the color map of the two colors."""
    texture = str(rng.choice(TEXTURES))
    first, second = rng.choice(len(COLORS), size=2, replace=False)
    names = list(COLORS)
    rgb = np.array([COLORS[names[first]], COLORS[names[second]]], dtype=np.float64)
    rgb = np.clip(rgb + rng.integers(-18, 19, size=(2, 3)), 0, 255)
    on = _texture(texture, size, rng) > 0
    img = np.where(on[..., None], rgb[0], rgb[1])
    small = np.asarray(Image.fromarray(on.astype(np.uint8)).resize((label_size, label_size), Image.NEAREST)) > 0
    color = np.where(small, NUMBER[f"{names[first]}-c"], NUMBER[f"{names[second]}-c"])
    return img, {"color": color, "object": np.zeros_like(color), "part": np.zeros_like(color)}, {"texture": texture}


def _make_image(i: int, size: int, label_size: int, seed: int):
    """(uint8 image (size, size, 3), pixel maps {category: int[label_size, label_size]}, whole-image
    labels {category: name}, is a validation image)."""
    rng = np.random.default_rng([seed, i])
    make = _texture_image if i % TEXTURE_EVERY == TEXTURE_EVERY - 1 else _scene_image
    img, maps, whole = make(rng, size, label_size)
    img = img + rng.normal(0.0, 5.0, size=img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img, maps, whole, rng.random() < 0.1


def _png_bytes(labels: np.ndarray) -> bytes:
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def make_concept_dataset(root, n_images: int, *, size: int = 224, seed: int = 0, progress: bool = True) -> Path:
    """Write `n_images` generated images with Broden-format labels under `root`; returns root.

    Images are size x size JPEGs; label maps are (size // 2) x (size // 2) like broden1_224.
    Two kinds of image, as in Broden: scene images (two of every three: color, object (backgrounds
    and objects) and part maps, part only where an object with parts is visible, and one of 12 scene
    labels) and full-frame texture images (every third, i % 3 == 2: one of 5 textures over the whole
    image, and its color map). Every category can so have detectors: each scene or texture is
    labelled on about 1/18 or 1/15 of the images, which lets a unit firing on its images alone reach
    IoU 0.005 * 18 or 0.005 * 15 (its mask is 0.5% of all pixels), over the detector threshold 0.04.
    The same (n_images, size, seed) always gives the same files, byte for byte.
    progress: show a tqdm bar of the images written (on by default).
    """
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive int, got {n_images!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"root {str(root)!r} is a file, expected a folder")
    (root / "images" / "generated").mkdir(parents=True, exist_ok=True)
    label_size = size // 2
    freq = np.zeros(len(VOCAB), dtype=np.int64)
    cover = np.zeros(len(VOCAB), dtype=np.float64)
    cat_freq = {c: 0 for c in CATEGORIES}
    rows = []
    numbers = range(n_images)
    if progress:
        from unitscope._progress import progress_bar

        numbers = progress_bar(numbers, desc="concept dataset", unit="image")
    for i in numbers:
        img, maps, whole, is_val = _make_image(i, size, label_size, seed)
        stem = f"generated/{i:06d}"
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=92)
        (root / "images" / f"{stem}.jpg").write_bytes(buf.getvalue())
        cells = {}
        for cat in ("color", "object", "part"):
            m = maps[cat]
            if not m.any():
                cells[cat] = ""
                continue
            (root / "images" / f"{stem}_{cat}.png").write_bytes(_png_bytes(m))
            cells[cat] = f"{stem}_{cat}.png"
            nums, counts = np.unique(m[m > 0], return_counts=True)
            freq[nums] += 1
            cover[nums] += counts / m.size
            cat_freq[cat] += 1
        for cat in ("scene", "texture"):
            name = whole.get(cat)
            cells[cat] = str(NUMBER[name]) if name else ""
            if name:
                freq[NUMBER[name]] += 1
                cover[NUMBER[name]] += 1.0
                cat_freq[cat] += 1
        rows.append([f"{stem}.jpg", "val" if is_val else "train", size, size, label_size, label_size]
                    + [cells[c] for c in CATEGORIES])

    def write(name, header, body):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(body)

    write("index.csv", ["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES, rows)
    # no row for label 0 (the empty label) in label.csv and c_*.csv: real Broden has none
    write("label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
          [[n, name, f"{cat}({freq[n]})", freq[n], f"{cover[n]:.4f}", ""] for n, (name, cat) in enumerate(VOCAB) if n])
    cats = []
    for cat in CATEGORIES:
        numbers = [n for n, (_, c) in enumerate(VOCAB) if c == cat]
        cats.append([cat, min(numbers), max(numbers), len(numbers), cat_freq[cat]])
        write(f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
              [[k + 1, n, VOCAB[n][0], freq[n], f"{cover[n]:.4f}"] for k, n in enumerate(numbers)])
    write("category.csv", ["name", "first", "last", "count", "frequency"], cats)
    return root
