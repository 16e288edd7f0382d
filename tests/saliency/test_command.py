"""`unitscope saliency` on a scikit-image photo saved to a temp file."""
import json

import pytest
from PIL import Image

from unitscope import cli

skdata = pytest.importorskip("skimage.data")


def test_cli_writes_overlays_and_html(tmp_path):
    img = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(img)
    out = tmp_path / "out"
    rc = cli.main(["saliency", "--model", "efficientnet_lite0", "--image", str(img), "--method", "gradcam,gradient,ig",
                   "--steps", "4", "--target", "top2", "--out", str(out)])
    assert rc == 0
    meta = json.loads((out / "targets.json").read_text())
    assert [t["class"] for t in meta["targets"]][0] == 285 and len(meta["targets"]) == 2
    page = (out / "index.html").read_text()
    assert "Egyptian cat" in page and "gradcam_285.png" in page
    for t in meta["targets"]:
        for m in ("gradcam", "gradient", "ig"):
            with Image.open(out / f"{m}_{t['class']}.png") as im:
                assert im.size == (224, 224)
    assert (out / "grid.png").exists() and (out / "image.png").exists()


def test_cli_bad_arguments(tmp_path, capsys):
    img = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()[:50, :50]).save(img)
    assert cli.main(["saliency", "--model", "efficientnet_lite0", "--image", str(img), "--method", "magic",
                     "--out", str(tmp_path / "o")]) == 2
    assert "--method: unknown magic" in capsys.readouterr().err
    assert cli.main(["saliency", "--model", "efficientnet_lite0", "--image", str(img), "--target", "1000",
                     "--method", "gradcam", "--out", str(tmp_path / "o")]) == 2
    assert "--target classes must lie in [0, 1000)" in capsys.readouterr().err
    assert cli.main(["saliency", "--model", "nope", "--image", str(img), "--out", str(tmp_path / "o")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
