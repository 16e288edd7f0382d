"""Issue 19 part 2: every image file is checked from its header before a pixel is decoded (small files
declaring huge sizes, sizes that disagree with index.csv), and photos are turned upright by EXIF."""
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from unitscope.cli import main
from unitscope.data import BrodenDataset, BrodenFormatError, decode_label_png, make_concept_dataset
from unitscope.models import MAX_PIXELS, open_image, read_image


def header_png(path, width, height):
    """A ~100-byte PNG whose header declares width x height 1-bit pixels (its data is cut short:
    nothing may ever decode it)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Call it once the test's files are written: from then on any pixel decoding fails the test
    (the refusal must come from the header alone)."""
    def load(self, *a, **k):
        raise AssertionError(f"decoded a {self.size} image")

    def forbid():
        monkeypatch.setattr(ImageFile.ImageFile, "load", load)
        monkeypatch.setattr(Image.Image, "load", load)
    return forbid


@pytest.mark.parametrize("size", [(10000, 10000), (20000, 20000), (1, 2**31 - 1), (100000, 100000)])
def test_a_huge_header_is_refused_before_decoding(tmp_path, no_decoding, size, recwarn):
    # 10000 x 10000 is above PIL's warning bound, 20000^2 above its DecompressionBombError bound
    p = header_png(tmp_path / "bomb.png", *size)
    assert p.stat().st_size < 200
    no_decoding()
    with pytest.raises(ValueError, match=r"bomb.png.*(more than the limit|decompression-bomb limit)"):
        read_image(p)
    with pytest.raises(ValueError, match="more than"):
        with open_image(p):
            pass
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_real_small_file_of_many_pixels(tmp_path, no_decoding):
    # a valid 1-bit PNG of 10000 x 10000 = 10^8 pixels: a few KB on disk, ~1.2 GB as float32 RGB
    p = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(p)
    assert p.stat().st_size < 100_000
    no_decoding()
    with pytest.raises(ValueError, match=f"declares 10000x10000 = 100000000 pixels, more than the limit {MAX_PIXELS}"):
        read_image(p)


def test_expected_size_is_checked_from_the_header(tmp_path, no_decoding):
    p = tmp_path / "a.png"
    Image.new("RGB", (30, 20)).save(p)
    no_decoding()
    with pytest.raises(ValueError, match="is 20x30, expected 20x31"):
        read_image(p, expect=(20, 31))


def test_limits_and_errors_name_the_file(tmp_path):
    p = tmp_path / "ok.png"
    Image.new("RGB", (5, 4), (255, 0, 0)).save(p)
    assert read_image(p, expect=(4, 5)).shape == (4, 5, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "none.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="cannot read image .*junk.png"):
        read_image(tmp_path / "junk.png")


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                               (2, lambda a: a[:, ::-1])])
def test_exif_orientation_turns_a_photo_upright(tmp_path, orientation, turn):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation  # what a phone writes for a photo taken sideways
    p = tmp_path / "photo.png"
    Image.fromarray(pixels).save(p, exif=exif)
    want = turn(pixels).astype(np.float32) / 255
    np.testing.assert_array_equal(read_image(p), want)
    np.testing.assert_array_equal(read_image(p, exif=False), pixels.astype(np.float32) / 255)


# ---- Broden datasets, the report, the CLI ------------------------------------------------------------
@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return make_concept_dataset(tmp_path_factory.mktemp("gen") / "ds", 6, size=32, seed=2)


def test_broden_image_and_label_headers_checked_against_index_csv(tmp_path, gen, no_decoding):
    root = tmp_path / "ds"
    shutil.copytree(gen, root)
    ds = BrodenDataset(root)
    header_png(root / "images" / ds.rows[1].image, 20000, 20000)
    Image.new("RGB", (33, 32)).save(root / "images" / ds.rows[2].image, format="PNG")  # ih/iw are 32 x 32
    header_png(root / "images" / ds.rows[3].pixel["color"][0], 100000, 100000)
    Image.new("RGB", (31, 32)).save(root / "images" / ds.rows[4].pixel["color"][0])
    header_png(tmp_path / "l.png", 30000, 30000)
    no_decoding()
    with pytest.raises(BrodenFormatError, match=r"index.csv line 3 .*more than"):
        ds[1]
    with pytest.raises(BrodenFormatError, match=r"index.csv line 4 .*is 32x33, expected 32x32"):
        ds[2]
    ds.fields = ("labels",)  # the label maps alone (the images would decode)
    with pytest.raises(BrodenFormatError, match=r"index.csv line 5 .*label PNG .*000003_color.png' declares .*more than"):
        ds[3]
    with pytest.raises(BrodenFormatError, match=r"label PNG .*is 32x31, expected 16x16"):
        ds[4]
    with pytest.raises(BrodenFormatError, match="more than"):
        decode_label_png(tmp_path / "l.png")


def test_report_thumbnail_checks_the_header(tmp_path, no_decoding):
    from unitscope.dissect.report import _thumb

    p = header_png(tmp_path / "t.png", 20000, 20000)
    no_decoding()
    with pytest.raises(ValueError, match="dataset image .*more than"):
        _thumb(p, {})


def test_saliency_cli_refuses_a_bomb_in_one_line(tmp_path, capsys):
    p = header_png(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(SystemExit) as e:
        main(["saliency", "--image", str(p), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("unitscope saliency: error: argument --image: image ")
    assert not (tmp_path / "o").exists()


def test_dissect_cli_refuses_a_bomb_in_the_dataset_in_one_line(tmp_path, gen, capsys):
    root = tmp_path / "ds"
    shutil.copytree(gen, root)
    header_png(root / "images" / BrodenDataset(root).rows[0].image, 20000, 20000)
    rc = main(["dissect", "--model", "efficientnet_lite0", "--layers", "_blocks.0", "--dataset", str(root),
               "--out", str(tmp_path / "o"), "--workers", "0", "--quiet", "--no-report"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("unitscope dissect: error: ") and "more than" in last, last
