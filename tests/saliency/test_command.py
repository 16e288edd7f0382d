"""`unitscope saliency` on a scikit-image photo saved to a temp file."""
import json

import numpy as np
import pytest
from PIL import Image

from unitscope import cli

skdata = pytest.importorskip("skimage.data")


def test_cli_writes_overlays_and_html(tmp_path):
    img = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(img)
    out = tmp_path / "out"
    rc = cli.main(["saliency", "--model", "efficientnet_lite0", "--image", str(img), "--method", "gradcam,gradient,ig",
                   "--steps", "4", "--target", "top2", "--out", str(out), "--quiet"])
    assert rc == 0
    meta = json.loads((out / "targets.json").read_text())
    assert [t["class"] for t in meta["targets"]][0] == 285 and len(meta["targets"]) == 2
    page = (out / "saliency.html").read_text()
    assert not (out / "index.html").exists()  # featviz and the dissect report keep their own pages
    assert "Egyptian cat" in page and "gradcam_285.png" in page
    for t in meta["targets"]:
        for m in ("gradcam", "gradient", "ig"):
            with Image.open(out / f"{m}_{t['class']}.png") as im:
                assert im.size == (224 + 64, 224)  # the overlay and its colour bar
    assert (out / "grid.png").exists() and (out / "image.png").exists()


def test_cli_new_methods(tmp_path):
    # Ablation-CAM is left out: 1280 forward passes on EfficientNet's CAM layer
    out = tmp_path / "out"
    methods = ["lrp", "xgradcam", "layercam", "eigencam", "fullgrad", "deeplift", "gradientshap"]
    rc = cli.main(["saliency", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--method",
                   ",".join(methods), "--composite", "epsilon_plus_flat", "--samples", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    for m in methods:
        with Image.open(out / f"{m}_285.png") as im:
            assert im.size == (224 + 64, 224)  # the overlay and its colour bar
    assert all(m in (out / "saliency.html").read_text() for m in methods)


def test_cli_metrics(tmp_path, capsys):
    mask = tmp_path / "mask.png"
    m = np.zeros((300, 451), dtype=np.uint8)  # chelsea's size; all but a 1-pixel border: every peak is inside
    m[1:-1, 1:-1] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "out"
    rc = cli.main(["saliency", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--method",
                   "gradcam,gradient", "--metrics", "--mask", str(mask), "--out", str(out), "--quiet"])
    assert rc == 0
    meta = json.loads((out / "targets.json").read_text())
    scores = meta["targets"][0]["metrics"]
    for name in ("gradcam", "gradient"):
        s = scores[name]
        assert -1 <= s["faithfulness_correlation"] <= 1
        assert s["pointing_game"] == 1.0 and 0.98 < s["relevance_mass"] <= 1
    assert "faithfulness_correlation" in capsys.readouterr().out


def _fails(argv, capsys, message):
    """The command exits with code 2 and prints one line `unitscope saliency: error: ...message...`."""
    try:
        rc = cli.main(["saliency"] + argv)
    except SystemExit as e:  # argparse's own exit for a bad argument value
        rc = e.code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert last.startswith("unitscope saliency: error: ") and message in last, last


def test_cli_bad_arguments(tmp_path, capsys):
    img = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()[:50, :50]).save(img)
    ok = ["--model", "efficientnet_lite0", "--image", str(img), "--out", str(tmp_path / "o"), "--quiet"]
    _fails(ok + ["--method", "magic"], capsys, "argument --method: unknown magic; choose among gradient")
    _fails(ok + ["--target", "1000", "--method", "gradcam"], capsys, "--target classes must lie in [0, 1000)")
    _fails(ok + ["--target", "top0"], capsys, "argument --target: top0: K must be at least 1")
    _fails(ok + ["--target", "cat"], capsys, "argument --target: must be N, N,M,... or topK, got 'cat'")
    _fails(["--model", "nope", "--image", str(img), "--out", str(tmp_path / "o")], capsys,
           "--model 'nope': not a registered model (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2) nor MODULE:FACTORY")
    _fails(ok + ["--samples", "0"], capsys, "argument --samples: must be a positive integer, got 0")
    _fails(ok + ["--steps", "x"], capsys, "argument --steps: must be a positive integer, got 'x'")
    _fails(ok + ["--samples", "1", "--method", "lime"], capsys, "--samples must be at least 2 for LIME")
    _fails(ok + ["--alpha", "2"], capsys, "argument --alpha: must be a number in [0, 1], got 2")
    _fails(ok + ["--device", "gpu7"], capsys, "argument --device: 'gpu7' is not a torch device")
    _fails(ok + ["--mask", str(img)], capsys, "--mask is used by --metrics only")
    _fails(ok + ["--mask", str(tmp_path / "none.png"), "--metrics"], capsys, "argument --mask")
    _fails(ok + ["--composite", "zplus"], capsys, "argument --composite: unknown composite 'zplus'; choose among")
    # the misspelled CAM layer gets the close names, before any method runs
    _fails(ok + ["--method", "gradcam", "--layer", "_block.10"], capsys, "similar names: _blocks.10")
    assert not (tmp_path / "o").exists()


def test_cli_bad_image_and_out(tmp_path, capsys):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a photo")
    Image.fromarray(skdata.chelsea()).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:5000])
    out = ["--out", str(tmp_path / "o")]
    for name in ("empty.jpg", "notes.jpg", "cut.png"):
        _fails(["--model", "efficientnet_lite0", "--image", str(tmp_path / name)] + out, capsys,
               f"argument --image: cannot read image '{tmp_path / name}'")
    _fails(["--model", "efficientnet_lite0", "--image", str(tmp_path / "missing.png")] + out, capsys, "does not exist")
    _fails(["--model", "efficientnet_lite0", "--image", "skimage:dog"] + out, capsys, "unknown scikit-image photo 'dog'")
    _fails(["--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--out", str(tmp_path / "whole.png")],
           capsys, "argument --out: ")
    _fails(["--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--out", str(tmp_path / "whole.png" / "x")],
           capsys, "is a file")


def test_cli_bundled_photo_and_progress(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["saliency", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--method", "ig",
                     "--steps", "4", "--batch-size", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "ig: " in err and "batch" in err  # the tqdm bar of integrated gradients (4 steps in 2 batches)
    meta = json.loads((out / "targets.json").read_text())
    assert meta["image"] == "skimage:chelsea" and meta["targets"][0]["class"] == 285
    assert cli.main(["saliency", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--method", "ig",
                     "--steps", "4", "--out", str(out), "--quiet"]) == 0
    assert "batch" not in capsys.readouterr().err
