"""Running a method leaves the model as it found it (issue 19 part 2): each module's own training
flag comes back (a frozen BatchNorm in a model being fine-tuned stays in eval mode, MC-dropout stays
in train mode), and no explanation updates BatchNorm's running statistics of a model in train mode."""
import warnings

import pytest
import torch
from torch import nn

import unitscope
from unitscope import saliency as S
from unitscope._model_state import ModelState, untouched
from unitscope.featviz import channel, render, score


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)          # frozen: eval while the rest trains
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)         # trains
        self.drop = nn.Dropout(0.5)          # MC-dropout: train while the rest is eval
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def flags(model):
    return {name: m.training for name, m in model.named_modules()}


def mixed(train: bool):
    """The model in train mode with a frozen BatchNorm, or in eval mode with MC-dropout."""
    model = Net().train(train)
    (model.bn if train else model.drop).train(not train)
    return model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the method changed the model's {changed}"


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    from unitscope.data import make_concept_dataset
    return make_concept_dataset(tmp_path_factory.mktemp("modes") / "ds", 8, size=16, seed=3)


@pytest.mark.parametrize("train", [True, False])
def test_dissect_restores_each_modules_mode(train, concepts):
    model = mixed(train)
    before, state = flags(model), snapshot(model)
    unitscope.dissect(model, ["conv2"], concepts, batch_size=4, progress=False, topk=1)
    assert flags(model) == before
    assert_same_state(model, state)


@pytest.mark.parametrize("train", [True, False])
def test_featviz_restores_each_modules_mode(train):
    model = mixed(train)
    before, state = flags(model), snapshot(model)
    render(model, channel("conv2", 1), size=16, steps=2, param="pixel", preprocess=None, progress=False)
    score(model, channel("conv2", 1), torch.rand(2, 3, 16, 16), preprocess=None)
    assert flags(model) == before
    assert all(p.requires_grad for p in model.parameters())
    assert_same_state(model, state)


METHODS = {
    "gradient": lambda m: S.VanillaGradient(m),
    "integrated_gradients": lambda m: S.IntegratedGradients(m, steps=4),
    "smoothgrad": lambda m: S.SmoothGrad(S.VanillaGradient(m), n_samples=3),
    "occlusion": lambda m: S.Occlusion(m, window=8, stride=8, compile=False),
    "gradcam": lambda m: S.GradCAM(m, "conv2"),
    "scorecam": lambda m: S.ScoreCAM(m, "conv2", compile=False),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_saliency_on_a_training_model_leaves_it_unchanged(name):
    model = Net().train()
    state = snapshot(model)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training-mode warning
        METHODS[name](model)(x, [0, 1])
    assert_same_state(model, state)
    assert model.training and model.bn.training  # the mode itself is the caller's


def test_explain_on_a_training_model_leaves_it_unchanged(concepts):
    model = Net().eval()
    d = unitscope.dissect(model, ["conv2"], concepts, batch_size=4, progress=False, topk=1)
    model.train()
    state = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unitscope.explain(model, torch.rand(1, 3, 16, 16), d, "conv2", top=1)
    assert_same_state(model, state)


def test_model_state_restores_flags_and_buffers_even_after_an_error():
    model = mixed(True)
    before, state = flags(model), snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), untouched(model, eval=True):
        assert not any(m.training for m in model.modules())
        model(torch.rand(2, 3, 8, 8))
        model.bn2.train()
        model(torch.rand(2, 3, 8, 8))  # updates bn2's running statistics
        raise RuntimeError("boom")
    assert flags(model) == before
    assert_same_state(model, state)
    saved = ModelState(model)
    model.bn2.running_mean = torch.full((6,), 7.0)  # a buffer replaced, not updated in place
    model.eval()
    saved.restore()
    assert flags(model) == before
    assert_same_state(model, state)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        ModelState(3)
