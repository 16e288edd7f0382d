"""The one image reader (models.images): every bit depth and mode scaled to [0, 1], bad input refused."""
import numpy as np
import pytest
import torch
from PIL import Image

from unitscope.models.images import SKIMAGE_PHOTOS, load_image, read_image

RNG = np.random.default_rng(0)
U8 = RNG.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
U16 = RNG.integers(0, 65536, size=(9, 7), dtype=np.uint16)


def test_8bit_rgb_file_and_array(tmp_path):
    Image.fromarray(U8).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.dtype == np.float32 and got.shape == (9, 7, 3)
    np.testing.assert_array_equal(got, U8.astype(np.float32) / 255)
    np.testing.assert_array_equal(read_image(U8), got)


def test_16bit_gray_png_keeps_its_range(tmp_path):
    Image.fromarray(U16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # Pillow keeps 16 bits
    got = read_image(tmp_path / "g16.png")
    expect = U16.astype(np.float32) / 65535
    for c in range(3):
        np.testing.assert_allclose(got[:, :, c], expect, rtol=0, atol=1e-7)
    assert 0.0 < got.mean() < 1.0 and len(np.unique(got)) > 2  # not saturated to 0/1
    np.testing.assert_array_equal(read_image(U16), got)  # a uint16 array the same


def test_16bit_rgb_png(tmp_path):
    """Pillow reads 16-bit RGB PNGs as 8-bit RGB (the high bytes): scaled by 255, not saturated."""
    rgb16 = RNG.integers(0, 65536, size=(5, 4, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    _write_png16_rgb(path, rgb16)
    got = read_image(path)
    assert got.shape == (5, 4, 3)
    np.testing.assert_allclose(got, rgb16.astype(np.float64) / 65535, atol=1 / 255 + 1e-6)
    np.testing.assert_array_equal(read_image(rgb16), (rgb16.astype(np.float32) / np.float32(65535)))


def _write_png16_rgb(path, arr):
    """A 16-bit-per-channel RGB PNG written by hand (zlib + CRC), so the test needs no extra writer."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_palette_rgba_gray_and_bilevel(tmp_path):
    pal = Image.fromarray(U8).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"),
                                  np.asarray(pal.convert("RGB"), dtype=np.float32) / 255)
    rgba = np.concatenate([U8, np.full((9, 7, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), U8 / np.float32(255))  # alpha dropped
    Image.fromarray(U8[:, :, 0]).save(tmp_path / "l.png")
    got = read_image(tmp_path / "l.png")
    np.testing.assert_array_equal(got[:, :, 2], U8[:, :, 0] / np.float32(255))
    Image.fromarray(U8[:, :, 0] > 127).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[:, :, 0], (U8[:, :, 0] > 127).astype(np.float32))


def test_float_arrays_and_pil_float():
    f = RNG.random((6, 5, 3)).astype(np.float64)
    np.testing.assert_allclose(read_image(f), f.astype(np.float32))
    np.testing.assert_allclose(read_image(Image.fromarray(f[:, :, 0].astype(np.float32), "F"))[:, :, 1],
                               f[:, :, 0].astype(np.float32))
    with pytest.raises(ValueError, match=r"float image values must lie in \[0, 1\], got \[0, 200\]; divide 8-bit"):
        read_image(np.linspace(0, 200, 30).reshape(5, 6))
    with pytest.raises(ValueError, match="must be finite"):
        read_image(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="uint8, uint16, bool or floats in \\[0, 1\\], got dtype int64"):
        read_image(np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="image must be"):
        read_image(np.zeros((0, 4, 3), dtype=np.uint8))


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        read_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(U8).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    for name in ("empty.png", "text.png", "cut.png"):
        with pytest.raises(ValueError, match=f"cannot read image .*{name}"):
            read_image(tmp_path / name)


def test_skimage_photos():
    skdata = pytest.importorskip("skimage.data")
    np.testing.assert_array_equal(read_image("skimage:chelsea"), skdata.chelsea() / np.float32(255))
    assert read_image("skimage:camera").shape == skdata.camera().shape + (3,)  # grayscale -> 3 channels
    assert "chelsea" in SKIMAGE_PHOTOS
    with pytest.raises(ValueError, match="unknown scikit-image photo 'nope'; choose among astronaut"):
        read_image("skimage:nope")


def test_load_image_resizes_in_range(tmp_path):
    Image.fromarray(U16).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png", (4, 3))
    assert x.shape == (1, 3, 4, 3) and x.dtype == torch.float32 and x.is_contiguous()
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_broden_reader_scales_16bit_images(tmp_path):
    from unitscope.data import BrodenDataset, make_concept_dataset

    root = make_concept_dataset(tmp_path / "ds", 2, size=32, seed=0, progress=False)
    gray16 = RNG.integers(0, 65536, size=(32, 32), dtype=np.uint16)
    Image.fromarray(gray16).save(root / "images" / "generated" / "000001.jpg", format="PNG")  # PIL reads by content
    ds = BrodenDataset(root)
    x = ds[1]["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(gray16.astype(np.float32) / 65535), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds[0]["image"].permute(1, 2, 0).numpy(),
                                  read_image(root / "images" / "generated" / "000000.jpg"))
    assert BrodenDataset(root, resolution=16)[1]["image"].shape == (3, 16, 16)
