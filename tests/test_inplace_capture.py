"""A captured layer is its output as the layer returned it, whatever the model does to that tensor
afterwards (issue 19 part 1): a ResNet BasicBlock (`out += identity`, ReLU(inplace=True)) and a VGG-style
stack (conv, then ReLU(inplace=True)), written as torchvision writes them. Dissection (alone, with a later
layer, with a checkpoint, compiled), Grad-CAM, featviz, dataset examples and explain are each compared
with a reference that computes the layer's output directly: a forward that stops at the layer."""
import numpy as np
import pytest
import torch
from torch import nn

import unitscope
from unitscope.dissect import imagenet_preprocess
from unitscope.featviz import channel, dataset_examples, render, score
from unitscope.featviz.param import make_image
from unitscope.reference.quantile import exact_quantile
from unitscope.saliency import GradCAM

SIZE = 32


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, as written there."""

    def __init__(self, inplanes, planes):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out += identity
        out = self.relu(out)
        return out


class TinyResNet(nn.Module):
    """stem (conv-bn-relu), one BasicBlock, a later 1x1 conv `head`, global pooling and fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.block = BasicBlock(6, 6)
        self.head = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 4)

    def stem(self, x):
        return self.relu(self.bn1(self.conv1(x)))

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.fc(self.head(x).mean(dim=(2, 3)))

    # the reference: a forward that stops at block.bn2, and the rest of the network from there
    def upto(self, x):
        b = self.block
        return b.bn2(b.conv2(b.relu(b.bn1(b.conv1(self.stem(x))))))

    def rest(self, a, x):
        return self.fc(self.head(torch.relu(a + self.stem(x))).mean(dim=(2, 3)))


class TinyVGG(nn.Module):
    """torchvision's VGG layout: `features` a Sequential of conv, ReLU(inplace=True), max pool."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(6, 5, 1))
        self.classifier = nn.Linear(5, 4)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))

    def upto(self, x):
        return self.features[3](self.features[:3](x))

    def rest(self, a, x):
        return self.classifier(self.features[4:](a.clone()).mean(dim=(2, 3)))


def build(kind):
    torch.manual_seed(0)
    model = TinyResNet() if kind == "resnet" else TinyVGG()
    with torch.no_grad():  # BatchNorm with statistics that leave negative outputs for the ReLU to change
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


LAYER = {"resnet": "block.bn2", "vgg": "features.3"}  # each followed by in-place operations
LATER = {"resnet": "head", "vgg": "features.5"}
KINDS = ["resnet", "vgg"]


def images(n=3, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from unitscope.data import BrodenDataset, make_concept_dataset
    return BrodenDataset(make_concept_dataset(tmp_path_factory.mktemp("inplace") / "ds", 12, size=SIZE, seed=2))


def reference_thresholds(model, dataset, q):
    x = torch.stack([dataset.with_fields("image")[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        a = model.upto(imagenet_preprocess(x))
    return exact_quantile(a, q, dim=1)


@pytest.mark.parametrize("kind", KINDS)
def test_dissection_thresholds_are_the_layers_own_output(kind, dataset, tmp_path):
    model, layer = build(kind), LAYER[kind]
    expect = reference_thresholds(model, dataset, 0.5)
    runs = {
        "alone": {"layers": [layer]},
        "with a later layer": {"layers": [layer, LATER[kind]]},
        "checkpointed": {"layers": [layer], "checkpoint_dir": tmp_path / "ckpt"},
        "resumed from the checkpoint": {"layers": [layer], "checkpoint_dir": tmp_path / "ckpt"},
        "eager": {"layers": [layer], "compile": False},
    }
    for what, kw in runs.items():
        d = unitscope.dissect(model, kw.pop("layers"), dataset, batch_size=4, quantile=0.5, progress=False,
                              topk=2, preprocess=imagenet_preprocess, **kw)
        torch.testing.assert_close(torch.as_tensor(d[layer].thresholds), expect, rtol=1e-6, atol=1e-6, msg=what)


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_dissection_thresholds_are_the_layers_own_output(kind, dataset):
    model, layer = build(kind), LAYER[kind]
    expect = reference_thresholds(model, dataset, 0.5)
    d = unitscope.dissect(model, [layer], dataset, batch_size=4, quantile=0.5, progress=False, topk=2, compile=True,
                          preprocess=imagenet_preprocess)
    assert d.settings["compiled"]
    # compiled code may round differently in the last bits; the in-place error is of order 0.1-1
    torch.testing.assert_close(torch.as_tensor(d[layer].thresholds), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcam_uses_the_layers_output_and_its_gradient(kind):
    model, layer = build(kind), LAYER[kind]
    x = images()
    target = [0, 2, 3]
    a = model.upto(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.rest(a, x)[[0, 1, 2], target].sum(), a)
    expect = torch.einsum("bk,bkhw->bhw", g.mean(dim=(2, 3)), a.detach())
    got = GradCAM(model, layer, relu=False, upsample=False, normalize=False)(x, target)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    # and the capture hands the model the same forward: the scores are unchanged
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.rest(model.upto(x), x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_featviz_objective_at_the_layer(kind):
    model, layer = build(kind), LAYER[kind]
    x = images()
    with torch.no_grad():
        expect = model.upto(x)[:, 3].mean(dim=(1, 2))
    torch.testing.assert_close(score(model, channel(layer, 3), x, preprocess=None), expect, rtol=1e-5, atol=1e-6)
    # the render loop's first value is the objective on the initial image (no transforms)
    r = render(model, channel(layer, 3), size=SIZE, param="pixel", transforms=None, steps=1, lr=1e-3,
               preprocess=None, seed=5, progress=False)
    x0 = make_image("pixel", 1, (SIZE, SIZE), True, generator=[torch.Generator().manual_seed(5)])()
    with torch.no_grad():
        first = float(model.upto(x0)[:, 3].mean())
    assert r.history[0] == pytest.approx(first, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_dataset_examples_at_the_layer(kind, reduce):
    model, layer = build(kind), LAYER[kind]
    x = images(6, seed=3)
    got = dataset_examples(model, layer, list(x), k=2, preprocess=None, patch=False, batch_size=4, reduce=reduce,
                           progress=False)
    with torch.no_grad():
        a = model.upto(x)
        per_image = a.amax(dim=(2, 3)) if reduce == "max" else a.mean(dim=(2, 3))  # (6, K)
    torch.testing.assert_close(got.top_values, per_image.topk(2, dim=0).values.T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.bottom_values, (-per_image).topk(2, dim=0).values.T.neg(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_explain_contributions_at_the_layer(kind, dataset):
    model, layer = build(kind), LAYER[kind]
    d = unitscope.dissect(model, [layer], dataset, batch_size=4, progress=False, topk=2, preprocess=imagenet_preprocess)
    x = images(2, seed=4)
    out = unitscope.explain(model, x, d, layer, target=[1, 3], top=2)
    a = model.upto(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.rest(a, x)[[0, 1], [1, 3]].sum(), a)
    expect = (g.double().mean(dim=(2, 3)) * a.detach().double().sum(dim=(2, 3))).numpy()  # alpha_k * sum(A_k)
    for b, e in enumerate(out):
        np.testing.assert_allclose(e.contributions, expect[b], rtol=1e-5, atol=1e-6)
