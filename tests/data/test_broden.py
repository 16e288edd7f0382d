"""BrodenDataset on generated and hand-broken datasets; make_concept_dataset determinism; packing."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unitscope.data import BrodenDataset, BrodenFormatError, collate_broden, make_concept_dataset, pack_broden
from unitscope.data.generate import NUMBER


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return make_concept_dataset(tmp_path_factory.mktemp("gen") / "ds", 12, size=48, seed=3)


def _copy(gen, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(gen, dst)
    return dst


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    a = _digest(make_concept_dataset(tmp_path / "a", 6, size=40, seed=7))
    b = _digest(make_concept_dataset(tmp_path / "b", 6, size=40, seed=7))
    c = _digest(make_concept_dataset(tmp_path / "c", 6, size=40, seed=8))
    assert a == b
    assert len(a) > 6 * 3
    assert a != c


def test_items_shapes_and_label_semantics(gen):
    # two kinds of image, as Broden's sources (issue 20): scene images (color, object, part maps and a
    # scene label) and, every third, full-frame texture images (a color map and a texture label)
    ds = BrodenDataset(gen)
    assert ds.categories == ["color", "object", "part", "scene", "texture"]
    assert len(ds) == 12
    for i in range(len(ds)):
        it = ds[i]
        assert it["image"].shape == (3, 48, 48) and it["image"].dtype == torch.float32
        assert 0 <= float(it["image"].min()) and float(it["image"].max()) <= 1
        pl, ann = it["pixel_labels"], it["annotated"]
        whole = [int(ds.label_category[n]) for n in it["image_labels"].tolist()]
        assert (pl[0] > 0).all() and (ds.label_category[pl[0].long().flatten().numpy()] == 0).all()
        if i % 3 == 2:  # texture image: one texture over the whole frame, in two colors
            assert pl.shape == (1, 24, 24) and ann.tolist() == [True, False, False, False, True]
            assert whole == [4] and len(pl[0].unique()) == 2
            continue
        assert pl.shape[1:] == (24, 24) and pl.shape[0] in (2, 3)
        # every pixel has a color and an object label (backgrounds are objects too)
        assert (pl[1] > 0).all() and (ds.label_category[pl[1].long().flatten().numpy()] == 1).all()
        assert ann[0] and ann[1] and ann[3] and not ann[4]
        assert bool(ann[2]) == (pl.shape[0] == 3)
        assert whole == [3]  # one scene label
    # primary category from c_<cat>.csv coverage; label 0 has none
    assert ds.label_category[0] == -1
    assert ds.label_category[NUMBER["roof"]] == 2 and ds.label_names[NUMBER["roof"]] == "roof"
    # no row for the empty label 0 in label.csv or c_*.csv (real Broden has none)
    for name in ["label.csv"] + [f"c_{c}.csv" for c in ds.categories]:
        rows = (gen / name).read_text().splitlines()[1:]
        assert rows and not any(r.startswith("0,") or ",0,-," in r for r in rows), name
    assert ds.label_names[0] == ""


def test_label_png_decoding_uses_red_plus_256_green(tmp_path, gen):
    root = _copy(gen, tmp_path)
    ds = BrodenDataset(root)
    rel = ds.rows[0].pixel["object"][0]
    arr = np.zeros((24, 24, 3), np.uint8)
    arr[..., 0] = NUMBER["car"]  # label 19 in red ...
    arr[:5, :, 0], arr[:5, :, 1] = 0, 0
    Image.fromarray(arr).save(root / "images" / rel)
    it = BrodenDataset(root, categories=["object"])[0]
    assert (it["pixel_labels"][0, 5:] == NUMBER["car"]).all() and (it["pixel_labels"][0, :5] == 0).all()


def test_high_label_numbers_need_green(tmp_path, gen):
    root = _copy(gen, tmp_path)
    lines = (root / "label.csv").read_text().splitlines()
    lines.append("300,bigthing,object(1),1,0.1,")
    (root / "label.csv").write_text("\n".join(lines) + "\n")
    with open(root / "c_object.csv", "a") as f:
        f.write("99,300,bigthing,1,0.1\n")
    ds = BrodenDataset(root, categories=["object"])
    rel = ds.rows[0].pixel["object"][0]
    arr = np.zeros((24, 24, 3), np.uint8)
    arr[..., 0], arr[..., 1] = 300 % 256, 300 // 256
    Image.fromarray(arr).save(root / "images" / rel)
    assert (BrodenDataset(root, categories=["object"])[0]["pixel_labels"] == 300).all()


def test_category_subset_and_split(gen):
    ds = BrodenDataset(gen, categories=["object", "scene"])
    it = ds[0]
    assert it["pixel_labels"].shape[0] == 1 and it["annotated"].shape == (2,)
    # labels outside the selected categories are dropped
    assert ds.label_category[NUMBER["red-c"]] == -1
    train = BrodenDataset(gen, split="train")
    val_rows = [r for r in BrodenDataset(gen).rows if r.split == "val"]
    assert len(train) + len(val_rows) == 12
    with pytest.raises(ValueError, match="categories must be among"):
        BrodenDataset(gen, categories=["nope"])


def test_collate_pads_variable_label_counts(gen):
    ds = BrodenDataset(gen)
    items = [ds[i] for i in range(len(ds))]
    b = collate_broden(items)
    L = max(it["pixel_labels"].shape[0] for it in items)
    assert b["pixel_labels"].shape == (12, L, 24, 24)
    for k, it in enumerate(items):
        n = it["pixel_labels"].shape[0]
        assert torch.equal(b["pixel_labels"][k, :n], it["pixel_labels"])
        assert (b["pixel_labels"][k, n:] == 0).all()
    assert b["image"].shape == (12, 3, 48, 48) and b["annotated"].dtype == torch.bool


def test_dataloader_workers_and_resolution(gen):
    ds = BrodenDataset(gen, resolution=32)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_broden)
    idx = torch.cat([b["index"] for b in loader])
    assert idx.tolist() == list(range(12))
    assert ds[0]["image"].shape == (3, 32, 32)
    only = ds.with_fields("labels")[0]
    assert "image" not in only and "pixel_labels" in only


def test_packed_labels_equal_png_decoding(tmp_path, gen):
    root = _copy(gen, tmp_path)
    plain = BrodenDataset(root, packed=False)
    with pytest.raises(ValueError, match="pack_broden"):
        BrodenDataset(root, packed=True)
    pack_broden(root)
    packed = BrodenDataset(root, packed=True)
    for i in range(len(plain)):
        assert torch.equal(plain[i]["pixel_labels"], packed[i]["pixel_labels"])
    # a changed index makes the pack stale
    (root / "index.csv").write_text((root / "index.csv").read_text() + "\n")
    assert BrodenDataset(root)._packed_rows is None


# ---- broken datasets: each error names the file and the row ------------------------------------
def test_missing_png_names_file_and_row(tmp_path, gen):
    root = _copy(gen, tmp_path)
    ds = BrodenDataset(root)
    rel = ds.rows[4].pixel["color"][0]
    (root / "images" / rel).unlink()
    with pytest.raises(BrodenFormatError, match=r"index.csv line 6 .*missing file .*" + Path(rel).name):
        BrodenDataset(root)[4]


def test_unreadable_image(tmp_path, gen):
    root = _copy(gen, tmp_path)
    ds = BrodenDataset(root)
    (root / "images" / ds.rows[2].image).write_bytes(b"not a jpeg")
    with pytest.raises(BrodenFormatError, match=r"index.csv line 4 .*cannot read image"):
        ds[2]


def test_label_out_of_range(tmp_path, gen):
    root = _copy(gen, tmp_path)
    ds = BrodenDataset(root)
    arr = np.zeros((24, 24, 3), np.uint8)
    arr[3, 3, 0] = 200
    Image.fromarray(arr).save(root / "images" / ds.rows[1].pixel["object"][0])
    with pytest.raises(BrodenFormatError, match=r"line 3 .*holds label 200, out of range"):
        ds[1]
    text = (root / "index.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[9] = "999"
    text[1] = ",".join(cells)
    (root / "index.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(BrodenFormatError, match="image label 999 out of range"):
        BrodenDataset(root)[0]


@pytest.mark.parametrize("bad, match", [
    ("../../etc/passwd", "escapes the dataset"),
    ("/etc/passwd", "escapes the dataset"),
    ("generated/../../x.png", "escapes the dataset"),
])
def test_path_traversal_rejected(tmp_path, gen, bad, match):
    root = _copy(gen, tmp_path)
    text = (root / "index.csv").read_text().splitlines()
    cells = text[2].split(",")
    cells[7] = bad
    text[2] = ",".join(cells)
    (root / "index.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(BrodenFormatError, match=r"index.csv line 3 .*" + match):
        BrodenDataset(root)


def test_symlink_escaping_root_rejected(tmp_path, gen):
    root = _copy(gen, tmp_path)
    ds = BrodenDataset(root)
    outside = tmp_path / "outside.png"
    shutil.copy(root / "images" / ds.rows[0].pixel["color"][0], outside)
    target = root / "images" / ds.rows[0].pixel["color"][0]
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BrodenFormatError, match="escapes"):
        ds[0]


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("image,split,ih", "img,split,ih", 1), "lacks column"),
    (lambda t: t.replace(",224,", ",22x,", 1) if ",224," in t else t.replace(",48,48,", ",4x8,48,", 1),
     r"line 2: column 'ih' must be an integer"),
    (lambda t: t + "generated/x.jpg,train,48\n", "expected 11 columns"),
    (lambda t: "", "is empty"),
])
def test_bad_index_csv(tmp_path, gen, edit, match):
    root = _copy(gen, tmp_path)
    (root / "index.csv").write_text(edit((root / "index.csv").read_text()))
    with pytest.raises(BrodenFormatError, match=match):
        BrodenDataset(root)


def test_bad_label_csv_and_missing_files(tmp_path, gen):
    root = _copy(gen, tmp_path)
    text = (root / "label.csv").read_text().replace("color(", "color[", 1)
    (root / "label.csv").write_text(text)
    with pytest.raises(BrodenFormatError, match=r"label.csv line \d+: category must look like"):
        BrodenDataset(root)
    root2 = _copy(gen, tmp_path / "two")
    (root2 / "c_part.csv").unlink()
    with pytest.raises(BrodenFormatError, match="missing Broden file .*c_part.csv"):
        BrodenDataset(root2)
    with pytest.raises(BrodenFormatError, match="not a directory"):
        BrodenDataset(tmp_path / "nowhere")


def test_mixed_cell_rejected(tmp_path, gen):
    root = _copy(gen, tmp_path)
    text = (root / "index.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[6] = cells[6] + ";12"
    text[1] = ",".join(cells)
    (root / "index.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(BrodenFormatError, match="mixes label numbers and PNG paths"):
        BrodenDataset(root)


def test_primary_category_is_largest_coverage_among_selected(tmp_path, gen):
    root = _copy(gen, tmp_path)
    win = NUMBER["window"]
    text = (root / "label.csv").read_text().splitlines()
    text = [l.replace(f"{win},window,part(", f"{win},window,object(3);part(") for l in text]
    (root / "label.csv").write_text("\n".join(text) + "\n")
    with open(root / "c_object.csv", "a") as f:
        f.write(f"99,{win},window,3,50.0\n")   # larger coverage as an object than as a part
    assert BrodenDataset(root).label_category[win] == 1                           # object
    assert BrodenDataset(root, categories=["part", "scene"]).label_category[win] == 0   # part
    assert BrodenDataset(root, categories=["color"]).label_category[win] == -1     # dropped
    it = BrodenDataset(root, categories=["color"])[0]
    assert (it["pixel_labels"] <= NUMBER["yellow-c"]).all()


# ---- encodings, control characters, sizes ------------------------------------------------------
def test_bom_index_is_read_and_non_utf8_is_a_clear_error(tmp_path, gen):
    root = _copy(gen, tmp_path)
    rows = [(r.image, r.pixel) for r in BrodenDataset(root).rows]
    text = (root / "index.csv").read_text(encoding="utf-8")
    (root / "index.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())        # Excel's UTF-8 with BOM
    assert [(r.image, r.pixel) for r in BrodenDataset(root).rows] == rows
    (root / "index.csv").write_bytes(text.replace("train", "tr\xe4in", 1).encode("latin-1"))
    with pytest.raises(BrodenFormatError, match=r"index.csv: it is not UTF-8 text \(byte 0xe4 at offset \d+\)"):
        BrodenDataset(root)
    (root / "index.csv").write_text(text, encoding="utf-8")
    (root / "label.csv").write_bytes(b"\xff\xfe" + (root / "label.csv").read_bytes())
    with pytest.raises(BrodenFormatError, match="label.csv: it is not UTF-8"):
        BrodenDataset(root)


@pytest.mark.parametrize("where", ["image", "png"])
def test_control_characters_in_paths_are_refused(tmp_path, gen, where):
    root = _copy(gen, tmp_path)
    lines = (root / "index.csv").read_text().splitlines()
    cells = lines[1].split(",")
    col = 0 if where == "image" else 7
    cells[col] = cells[col].replace(".", "\x01.", 1)
    lines[1] = ",".join(cells)
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BrodenFormatError, match=r"index.csv line 2 .*contains a control character"):
        BrodenDataset(root)


def test_nul_byte_is_a_clear_error(tmp_path, gen):
    root = _copy(gen, tmp_path)
    with pytest.raises(BrodenFormatError, match="NUL byte"):
        BrodenDataset(str(root) + "\0x")
    (root / "index.csv").write_text((root / "index.csv").read_text().replace(".jpg", "\0.jpg", 1))
    with pytest.raises(BrodenFormatError, match=r"index.csv.*(NUL|control character)"):
        BrodenDataset(root)


@pytest.mark.parametrize("number", [str(10**12), str(10**7), "65536", "9" * 5000])
def test_absurd_label_numbers_refused_before_allocating(tmp_path, gen, number):
    root = _copy(gen, tmp_path)
    with open(root / "label.csv", "a") as f:
        f.write(f"{number},huge,object(1),1,0.1,\n")
    with pytest.raises(BrodenFormatError, match=r"label.csv line \d+: column 'number' must (be <= 65535|be an int)"):
        BrodenDataset(root)


def test_largest_label_number_accepted(tmp_path, gen):
    root = _copy(gen, tmp_path)
    with open(root / "label.csv", "a") as f:
        f.write("65535,last,object(1),1,0.1,\n")
    assert BrodenDataset(root).num_labels == 65536


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.__setitem__(2, str(10**12)), r"column 'ih' must be <= 89478485"),
    (lambda c: (c.__setitem__(2, "100000"), c.__setitem__(3, "100000")), r"ih \* iw = 10000000000 pixels"),
    (lambda c: (c.__setitem__(4, "20000"), c.__setitem__(5, "20000")), r"sh \* sw = 400000000 pixels, more than"),
    (lambda c: c.__setitem__(9, "1;" + "9" * 6000), r"column 'scene' has label\(s\) .* outside 0..65535"),
    (lambda c: c.__setitem__(9, "70000"), r"column 'scene' has label\(s\) \[70000\] outside"),
])
def test_absurd_sizes_in_index_refused(tmp_path, gen, edit, match):
    root = _copy(gen, tmp_path)
    lines = (root / "index.csv").read_text().splitlines()
    cells = lines[1].split(",")
    edit(cells)
    lines[1] = ",".join(cells)
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BrodenFormatError, match=r"index.csv line 2.*" + match):
        BrodenDataset(root)


@pytest.mark.parametrize("name", ["x/../../../outside", "..\\..\\outside", "a\x00b", "new\nline"])
def test_category_names_never_become_paths(tmp_path, gen, name):
    root = _copy(gen, tmp_path)
    (tmp_path / "outside.csv").write_text("code,number,name,frequency,coverage\n")
    text = (root / "category.csv").read_text().replace("\npart,", f"\n\"{name}\",", 1)
    (root / "category.csv").write_text(text)
    with pytest.raises(BrodenFormatError, match=r"category.csv (line \d+: category name .* cannot name a file"
                                                r"|: line contains NUL|.*NUL)"):
        BrodenDataset(root)


def test_category_file_linking_outside_refused(tmp_path, gen):
    root = _copy(gen, tmp_path)
    outside = tmp_path / "elsewhere.csv"
    shutil.copy(root / "c_part.csv", outside)
    (root / "c_part.csv").unlink()
    (root / "c_part.csv").symlink_to(outside)
    with pytest.raises(BrodenFormatError, match="c_part.csv is a link that leads outside the dataset root"):
        BrodenDataset(root)


# ---- packed labels: checked against the PNGs they came from ----------------------------------
def test_pack_stale_when_a_png_or_label_csv_changes(tmp_path, gen):
    import os
    root = _copy(gen, tmp_path)
    pack_broden(root)
    assert BrodenDataset(root)._packed_rows is not None
    png = root / "images" / BrodenDataset(root).rows[0].pixel["object"][0]
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))     # re-encoded: same CSVs, new PNG
    assert BrodenDataset(root)._packed_rows is None
    with pytest.raises(ValueError, match="a label PNG changed .* since packing"):
        BrodenDataset(root, packed=True)
    pack_broden(root)
    assert BrodenDataset(root, packed=True)._packed_rows is not None
    (root / "label.csv").write_text((root / "label.csv").read_text() + "\n")
    with pytest.raises(ValueError, match="label.csv changed since packing"):
        BrodenDataset(root, packed=True)


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "source.json").write_text("{not json"), "unreadable"),
    (lambda d: (d / "source.json").write_bytes(b"\xff\xfe"), "unreadable"),
    (lambda d: (d / "source.json").write_text("[1, 2]"), "not an object"),
    (lambda d: (d / "paths.txt").write_text("a.png\n"), "paths.txt does not list"),
    (lambda d: (d / "labels.npy").write_bytes(b"garbage"), "unreadable"),
    (lambda d: np.save(d / "labels.npy", np.zeros((2, 3), np.float32)), "labels.npy holds float32"),
    (lambda d: (d / "paths.txt").unlink(), "paths.txt is missing"),
])
def test_damaged_pack_is_not_used(tmp_path, gen, damage, match):
    root = _copy(gen, tmp_path)
    pack_broden(root)
    damage(root / "packed")
    assert BrodenDataset(root)._packed_rows is None
    with pytest.raises(ValueError, match=match):
        BrodenDataset(root, packed=True)


def test_negative_packed_label_is_out_of_range(tmp_path, gen):
    root = _copy(gen, tmp_path)
    pack_broden(root)
    arr = np.load(root / "packed" / "labels.npy", mmap_mode="r+")
    arr[0, 2, 2] = -1                     # once read as the last label
    arr.flush()
    del arr
    ds = BrodenDataset(root, packed=True)
    with pytest.raises(BrodenFormatError, match=r"holds label -1, out of range"):
        ds[0]


def test_failed_pack_leaves_no_temporary_files(tmp_path, gen):
    root = _copy(gen, tmp_path)
    (root / "images" / BrodenDataset(root).rows[3].pixel["color"][0]).write_bytes(b"broken")
    with pytest.raises(BrodenFormatError, match="cannot read label PNG"):
        pack_broden(root)
    assert not list((root / "packed").glob("*.tmp*"))
