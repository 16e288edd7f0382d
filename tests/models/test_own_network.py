"""Your own network with every command (issue 21): a ResNet-style module written here, its weights in a
file, its normalization and class names, through the CLI; `unitscope layers` and unitscope.layers()."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unitscope
from unitscope.cli import main

MODULE = '''
import torch
from torch import nn


class BasicBlock(nn.Module):  # as torchvision writes it: out += identity, ReLU(inplace=True) called twice
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make():
    torch.manual_seed(0)
    return TinyResNet().eval()
'''
NAMES = ["zero", "<b>one</b>", "two & three", "three", "four"]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A working directory holding ownnet_models.py, trained-looking weights w.pt (not the factory's),
    classes.txt and a photo; returns (tmp_path, the model with the file's weights)."""
    (tmp_path / "ownnet_models.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("ownnet_models", None)
    from unitscope.models.own import import_factory

    model = import_factory("ownnet_models:make")()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    yield tmp_path, model.eval()
    sys.modules.pop("ownnet_models", None)


@pytest.fixture(scope="module")
def concept_root(tmp_path_factory):
    from unitscope.data import make_concept_dataset
    return make_concept_dataset(tmp_path_factory.mktemp("concepts") / "ds", 8, size=64, seed=1, progress=False)


OWN = ["--model", "ownnet_models:make", "--weights", "w.pt"]


def _fails(argv, capsys, message):
    """Exit code 2 and exactly one line on stderr: `unitscope CMD: error: ...message...` (no usage block)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's exit for a bad argument value
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"unitscope {argv[0]}: error: ") and message in lines[0], lines[0]


def _probs(model, image, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), size=32):
    x = unitscope.models.load_image(str(image), size=(size, size))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model((x - m) / s), 1)[0]


def test_saliency_with_own_model_weights_normalization_and_classes(user, capsys):
    tmp, model = user
    assert main(["saliency"] + OWN + ["--classes", "classes.txt", "--image", "photo.png", "--input-size", "32",
                 "--method", "gradcam,ig", "--steps", "4", "--target", "top5", "--out", "s", "--quiet"]) == 0
    meta = json.loads((tmp / "s" / "targets.json").read_text())
    probs = _probs(model, tmp / "photo.png")
    assert meta["layer"] == "layer2"  # the CAM layer found by rule: the last feature map before pooling
    for row in meta["targets"]:  # the file's weights, ImageNet normalization, the file's names
        assert row["probability"] == pytest.approx(float(probs[row["class"]]), rel=1e-5)
        assert row["name"] == NAMES[row["class"]]
    page = (tmp / "s" / "saliency.html").read_text()
    assert "&lt;b&gt;one&lt;/b&gt;" in page and "<b>one</b>" not in page and "two &amp; three" in page
    # --no-normalize and --mean 0,0,0 --std 1,1,1 feed [0, 1] pixels
    for extra, out in ((["--no-normalize"], "n"), (["--mean", "0,0,0", "--std", "1,1,1"], "m")):
        assert main(["saliency"] + OWN + extra + ["--image", "photo.png", "--input-size", "32", "--method", "gradient",
                     "--target", "0", "--out", out, "--quiet"]) == 0
        row = json.loads((tmp / out / "targets.json").read_text())["targets"][0]
        assert row["probability"] == pytest.approx(float(_probs(model, tmp / "photo.png", (0, 0, 0), (1, 1, 1))[0]),
                                                   rel=1e-5)
        assert row["name"] == "0"  # no --classes: classes are numbers
    with Image.open(tmp / "n" / "gradient_0.png") as im:
        assert im.size == (32 + 64, 32)  # overlay + colour bar


def test_featviz_adversarial_layers_with_own_model(user, capsys):
    tmp, _ = user
    assert main(["featviz"] + OWN + ["--layer", "layer1.0.relu@1", "--channels", "0-1", "--steps", "2", "--size",
                 "32", "--out", "f", "--quiet"]) == 0
    assert (tmp / "f" / "featviz.html").is_file() and len(list((tmp / "f" / "featviz").glob("*_max.png"))) == 2
    assert main(["adversarial"] + OWN + ["--classes", "classes.txt", "--image", "photo.png", "--target", "1",
                 "--steps", "2", "--render-steps", "2", "--size", "32", "--out", "a", "--quiet"]) == 0
    assert "<b>one</b>" in capsys.readouterr().out and (tmp / "a" / "contrast.png").is_file()
    assert main(["layers"] + OWN + ["--input-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "layer1.0.relu@1" in printed and "layer2.0.bn2" in printed
    line = next(l for l in printed.splitlines() if l.startswith("layer2 "))
    assert "1x16x8x8" in line and "usual, CAM layer" in line


def test_explain_with_own_model(user, capsys):
    tmp, model = user
    units = [{"unit": k, "threshold": 0.1, "label": ["house", "<i>sky</i>"][k % 2], "category": "object",
              "iou": 0.2} for k in range(16)]
    (tmp / "d.json").write_text(json.dumps({"layers": [{"layer": "layer2", "units": units, "settings": {}}]}))
    assert main(["explain"] + OWN + ["--classes", "classes.txt", "--image", "photo.png", "--input-size", "32",
                 "--dissection", "d.json", "--out", "e", "--quiet"]) == 0
    page = (tmp / "e" / "explanation.html").read_text()
    assert "layer2" in page and "&lt;i&gt;sky&lt;/i&gt;" in page and "<i>sky</i>" not in page
    x = unitscope.models.load_image(str(tmp / "photo.png"), size=(32, 32))
    (e,) = unitscope.explain(model, x, tmp / "d.json", "layer2", preprocess=unitscope.models.Normalize(
        unitscope.models.IMAGENET_MEAN, unitscope.models.IMAGENET_STD), class_names=NAMES)
    assert e.total == pytest.approx(e.logit - float(model.fc.bias[e.target].detach()), rel=1e-4, abs=1e-5)
    assert e.summary() in (tmp / "e" / "summary.txt").read_text()


def test_dissect_normalization_arguments(user, concept_root, capsys):
    tmp, model = user
    assert main(["dissect"] + OWN + ["--no-normalize", "--layers", "layer2", "--dataset", str(concept_root), "--out",
                 "d", "--workers", "0", "--quiet", "--no-report"]) == 0
    data = json.loads((tmp / "d" / "dissection.json").read_text())
    ref = unitscope.dissect(model, ["layer2"], concept_root, preprocess=lambda x: x, progress=False, compile=False)
    by_unit = {u["unit"]: u["threshold"] for u in data["layers"][0]["units"]}
    assert [by_unit[k] for k in range(16)] == pytest.approx(ref["layer2"].thresholds.tolist())
    _fails(["dissect"] + OWN + ["--no-normalize", "--mean", "0,0,0", "--layers", "layer2", "--dataset",
           str(concept_root), "--out", "x"], capsys, "--no-normalize cannot be combined with --mean/--std")
    _fails(["dissect"] + OWN + ["--mean", "0,0,0", "--layers", "layer2", "--dataset", str(concept_root), "--out", "x"],
           capsys, "--mean and --std go together")


def test_help_says_dissect_normalizes_with_imagenet():
    from unitscope import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("dissect", "saliency", "featviz", "explain", "adversarial", "layers"):
        text = " ".join(sub[name].format_help().split())
        assert "--weights" in text and "--no-normalize" in text and "MODULE:FACTORY" in text
        assert "(default: ImageNet's 0.485,0.456,0.406, for every model)" in text
        assert ("--classes" in text) == (name in ("saliency", "explain", "adversarial"))


def test_bad_model_arguments_fail_early_in_one_line(user, capsys):
    tmp, _ = user
    base = ["--image", "photo.png", "--out", "o"]
    _fails(["saliency"] + OWN + base + ["--mean", "0,0"], capsys, "argument --mean: must be 3 comma-separated")
    _fails(["saliency"] + OWN + base + ["--std", "1,0,1", "--mean", "0,0,0"], capsys, "must be positive numbers")
    _fails(["saliency"] + OWN + base + ["--std", "nan,1,1", "--mean", "0,0,0"], capsys, "must be positive numbers")
    (tmp / "four.txt").write_text("a\nb\nc\nd\n")
    _fails(["saliency"] + OWN + base + ["--classes", "four.txt"], capsys, "names 4 classes but --model")
    (tmp / "bad.txt").write_bytes(b"a\n\xff\xfe\n")
    _fails(["explain"] + OWN + base + ["--classes", "bad.txt", "--dissection", "photo.png"], capsys, "not UTF-8 text")
    _fails(["saliency"] + OWN + base + ["--method", "gradcam", "--layer", "layer9"], capsys,
           "(`unitscope layers --model ownnet_models:make` lists the layer names)")
    # a weights mismatch: counts and the first few keys, not every key
    other = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 1) for _ in range(20)])
    torch.save(other.state_dict(), tmp / "other.pt")
    try:
        main(["featviz", "--model", "ownnet_models:make", "--weights", "other.pt", "--layer", "layer2", "--out", "o"])
    except SystemExit:
        pass
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and len(err) < 600, err
    assert "40 unexpected keys (0.weight, 0.bias, 1.weight, ... (37 more))" in err and "missing keys (conv1.weight" in err
    assert not (tmp / "o").exists()


def test_argument_values_checked_before_work(tmp_path, capsys):
    """Issue 19 part 5: each of these failed late, or ran and wrote nothing useful, before."""
    (tmp_path / "file.txt").write_text("x")
    fv = ["featviz", "--model", "efficientnet_lite0", "--layer", "_blocks.10", "--steps", "1", "--quiet"]
    _fails(fv + ["--size", "16", "--out", str(tmp_path / "o")], capsys, "--size 16: the model cannot run on a 16x16")
    _fails(fv + ["--channels", "5-3", "--out", str(tmp_path / "o")], capsys, "the range END 3 is below its START 5")
    _fails(fv + ["--lr", "inf", "--out", str(tmp_path / "o")], capsys, "argument --lr: must be a positive number")
    _fails(fv + ["--out", str(tmp_path / "file.txt")], capsys, "argument --out: ")
    _fails(fv + ["--prior-weight", "nan", "--out", str(tmp_path / "o")], capsys, "argument --prior-weight:")
    _fails(["adversarial", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--target", "-1", "--out",
            str(tmp_path / "o")], capsys, "argument --target: must be an integer >= 0")
    _fails(["adversarial", "--model", "efficientnet_lite0", "--image", "skimage:chelsea", "--target", "1", "--eps",
            "inf", "--out", str(tmp_path / "o")], capsys, "argument --eps: must be a positive number")
    assert not (tmp_path / "o").exists()


def test_api_arguments_checked():
    from unitscope import featviz, saliency
    from unitscope.featviz.adversarial import adversarial, contrast

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.rand(1, 3, 16, 16)
    nan_photo = x.clone()
    nan_photo[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        adversarial(model, nan_photo, 1, 0.1, 2, preprocess=None)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        adversarial(model, x, 1, 0.5, 2, norm="l2", step_size=float("inf"), preprocess=None)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        contrast(model, x, 1, render_steps=2, lr=float("inf"), preprocess=None)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        saliency.SmoothGrad(saliency.VanillaGradient(model), noise=float("nan"))
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        featviz.render(model, featviz.channel("0", 0), size=16, steps=1, lr=float("inf"), preprocess=None)


def test_layers_api_on_efficientnet_and_resnet_style(user):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    lm = unitscope.models.load("efficientnet_lite0")
    rows = unitscope.layers(lm.model, 224, preprocess=lm.preprocess)
    by = {r.name: r for r in rows}
    assert unitscope.models.cam_layer(lm.model, 224) == lm.cam_layer == "_swish@1"
    assert by["_swish@1"].cam and by["_swish@1"].usual and by["_swish@1"].shape == (1, 1280, 7, 7)
    assert by["_swish@0"].shape == (1, 32, 112, 112) and not by["_bn1"].usual and by["_bn1"].type == "BatchNorm2d"
    assert by["_fc"].shape == (1, 1000) and not by["_fc"].usual and sum(r.cam for r in rows) == 1
    # a render of _swish@1 from grey stays grey (an off ReLU6 passes no gradient): render its input, _bn1
    assert by["_swish@1"].pre_activation == "_bn1" and by["_blocks.3._swish@1"].pre_activation == "_blocks.3._bn1"
    assert by["_bn1"].pre_activation is None
    from unitscope.models.layers import render_layer
    assert render_layer(lm.model, "_swish@1", 224) == "_bn1" and render_layer(lm.model, "_blocks.10", 224) == "_blocks.10"
    r = unitscope.featviz.render(lm.model, unitscope.featviz.channel("_swish@1", 254), size=64, steps=3,
                                 preprocess=lm.preprocess, progress=False)
    assert r.history[-1] == 0.0  # why: no gradient reached the image
    _, model = user
    rows = {r.name: r for r in unitscope.layers(model, 64)}
    assert rows["layer2"].cam and rows["layer2"].shape == (1, 16, 16, 16) and rows["layer2"].usual
    assert rows["layer1.0"].usual and rows["layer1.0.relu@0"].usual and rows["layer1.0.relu@1"].usual
    assert not rows["layer1.0.bn2"].usual and not rows["layer2.0.downsample"].usual
    assert "layer1.0.relu" not in rows  # a module called twice appears once per call
    assert rows["layer1.0.relu@1"].pre_activation is None  # in place: no layer holds its input apart
    assert model.training is False
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        unitscope.layers(model, 0)
    with pytest.raises(ValueError, match="cannot run on a"):
        unitscope.layers(lm.model, 8)


def test_version_and_python_m(tmp_path):
    import os

    env = dict(os.environ, PYTHONPATH=str(Path(unitscope.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-m", "unitscope", "--version"], capture_output=True, text=True,
                          env=env, check=False, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"unitscope {unitscope.__version__}"
    done = subprocess.run([sys.executable, "-m", "unitscope", "info", "--bogus"], capture_output=True, text=True, check=False,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "unitscope: error: unrecognized arguments: --bogus"]
