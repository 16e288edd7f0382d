"""Planted answers: a hand-built model whose units are indicators of known concepts must be
dissected as detectors of exactly those concepts; noise and dead units must not be detectors."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unitscope
from unitscope.data import BrodenDataset

N, SIZE, S = 24, 64, 32          # images, image size, label size (= the planted layer's size)
SPOT, BLOB, GROUND, INDOOR, OUTDOOR = 1, 2, 3, 4, 5


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_planted_dataset(root: Path, seed=0) -> Path:
    """Label maps at 32x32; the image (64x64 PNG) carries the label code in R (x2 nearest), a smooth
    field in G and uniform noise in B. SPOT covers 118 label pixels and BLOB 117 over the dataset
    (just under 0.5% of 24*32*32 = 24576); GROUND covers the rest; scene labels per image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    spots = {0: (7, 7), 5: (7, 7), 9: (4, 5)}     # 49 + 49 + 20 = 118 pixels
    blobs = {2: (9, 9), 11: (6, 6)}               # 81 + 36 = 117 pixels
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(N):
        lab = np.full((S, S), GROUND, np.int32)
        for table, code in ((spots, SPOT), (blobs, BLOB)):
            if i in table:
                h, w = table[i]
                y, x = rng.integers(0, S - h), rng.integers(0, S - w)
                lab[y:y + h, x:x + w] = code
        img = np.zeros((SIZE, SIZE, 3), np.uint8)
        img[..., 0] = np.kron(lab, np.ones((2, 2), np.int32)) * 40
        img[..., 1] = (127 + 120 * np.sin(yy / 7.0 + i) * np.cos(xx / 5.0)).astype(np.uint8)
        img[..., 2] = rng.integers(0, 256, (SIZE, SIZE))
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        png = np.zeros((S, S, 3), np.uint8)
        png[..., 0] = lab
        Image.fromarray(png).save(root / "images" / f"{i}_object.png")
        rows.append([f"{i}.png", "train", SIZE, SIZE, S, S, f"{i}_object.png", INDOOR if i % 3 else OUTDOOR])
    _write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", "object", "scene"], rows)
    _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
               [["object", 1, 3, 3, N], ["scene", 4, 5, 2, N]])
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
               [[0, "-", "", 0, 0, ""], [SPOT, "spot", "object(3)", 3, 0.1, ""], [BLOB, "blob", "object(2)", 2, 0.1, ""],
                [GROUND, "ground", "object(24)", 24, 23.8, ""], [INDOOR, "indoor-s", "scene(16)", 16, 16, ""],
                [OUTDOOR, "outdoor-s", "scene(8)", 8, 8, ""]])
    _write_csv(root / "c_object.csv", ["code", "number", "name", "frequency", "coverage"],
               [[1, SPOT, "spot", 3, 0.1], [2, BLOB, "blob", 2, 0.1], [3, GROUND, "ground", 24, 23.8]])
    _write_csv(root / "c_scene.csv", ["code", "number", "name", "frequency", "coverage"],
               [[1, INDOOR, "indoor-s", 16, 16], [2, OUTDOOR, "outdoor-s", 8, 8]])
    return root


class Units(torch.nn.Module):
    """Unit 0: SPOT indicator x (1 + smooth field) minus a little noise elsewhere; unit 1: same for
    BLOB; unit 2: pure noise; unit 3: dead (zeros). Output (B, 4, 32, 32) = label resolution."""

    def forward(self, x):
        code = torch.round(x[:, 0, ::2, ::2] * 255 / 40)
        field, noise = x[:, 1, ::2, ::2], x[:, 2, ::2, ::2]
        spot = (code == SPOT).float() * (1 + field) - 0.1 * noise
        blob = (code == BLOB).float() * (1 + field) - 0.1 * noise
        return torch.stack([spot, blob, noise, torch.zeros_like(noise)], 1)


class Planted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.units = Units()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.units(x).mean((2, 3)))


def identity(x):
    return x


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return BrodenDataset(make_planted_dataset(tmp_path_factory.mktemp("planted") / "ds"))


@pytest.mark.parametrize("union", ["category", "dataset"])
def test_planted_detectors(planted, union):
    d = unitscope.dissect(Planted(), ["units"], planted, batch_size=5, preprocess=identity, union=union,
                          progress=False)["units"]
    names = d.label_names
    assert names[d.best_label[0]] == "spot" and d.best_iou[0] >= 0.9
    assert names[d.best_label[1]] == "blob" and d.best_iou[1] >= 0.9
    assert d.best_category[0] == 0 and d.categories[0] == "object"
    found = {x["unit"]: x for x in d.detectors()}
    assert set(found) == {0, 1}
    assert found[0]["label"] == "spot" and found[1]["label"] == "blob"
    assert d.iou[2].max() < 0.04                # noise: never a detector
    assert d.dead[3] and not d.dead[:3].any()   # dead: flagged, never a detector
    assert d.unique_detectors() == {"object": 2, "scene": 0}


def test_dead_unit_not_a_detector_even_with_ge(planted):
    d = unitscope.dissect(Planted(), ["units"], planted, batch_size=8, preprocess=identity, threshold_op=">=",
                          progress=False)["units"]
    # with '>=' the dead unit's mask is every pixel: its raw IoU with 'ground' is high ...
    assert d.iou[3, GROUND] > 0.5
    # ... but a dead unit is never reported as a detector
    assert 3 not in {x["unit"] for x in d.detectors()}
    assert d.best_iou[3] == 0
    # (the noise is 8-bit, so '>=' also takes the pixels tied at the threshold: a lower IoU)
    assert d.label_names[d.best_label[0]] == "spot" and d.best_iou[0] > 0.3


def test_planted_counts_by_hand(planted):
    """Unit 0's mask is exactly SPOT plus the few highest noise pixels: check the counts."""
    d = unitscope.dissect(Planted(), ["units"], planted, batch_size=24, preprocess=identity, progress=False)["units"]
    assert d.label_count[SPOT] == 118 and d.label_count[BLOB] == 117
    assert d.intersection[0, SPOT] == 118
    # the unit's values recomputed with NumPy from the image files, the quantile by its formula
    vals = []
    for i in range(N):
        img = np.asarray(Image.open(planted.image_path(i)), dtype=np.float64)[::2, ::2] / 255
        code = np.round(img[..., 0] * 255 / 40)
        vals.append(np.where(code == SPOT, 1 + img[..., 1], 0) - 0.1 * img[..., 2])
    v = np.sort(np.concatenate([x.ravel() for x in vals]))
    pos = 0.995 * (v.size - 1)
    thr = v[int(pos)] + (v[int(pos) + 1] - v[int(pos)]) * (pos - int(pos))
    assert abs(float(d.thresholds[0]) - thr) < 1e-6
    above = int((v > np.float32(thr)).sum())
    assert d.activation_total[0] == above
    assert abs(d.iou[0, SPOT] - 118 / above) < 1e-12
    assert d.label_count[INDOOR] == 16 * S * S   # whole-image labels count every pixel


class NaNUnits(Units):
    """The planted units with unit 3 NaN everywhere (a broken channel)."""

    def forward(self, x):
        u = super().forward(x)
        return torch.cat([u[:, :3], torch.full_like(u[:, 3:], float("nan"))], 1)


class NaNUnit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.units = NaNUnits()

    def forward(self, x):
        return self.units(x)


def test_all_nan_unit_is_dead_not_a_crash(planted):
    """NaN values are ignored by the quantile; a unit with nothing else has no threshold and never
    fires, while the other units keep their answers."""
    d = unitscope.dissect(NaNUnit(), ["units"], planted, batch_size=8, preprocess=identity, progress=False)["units"]
    assert d.thresholds[3] == float("inf") and d.dead[3] and d.activation_total[3] == 0
    assert 3 not in {x["unit"] for x in d.detectors()}
    assert d.label_names[d.best_label[0]] == "spot" and d.best_iou[0] >= 0.9
