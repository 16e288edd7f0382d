"""randomization_test (Adebayo et al. 2018) and deletion_insertion (Petsiuk et al. 2018)."""
import numpy as np
import pytest
import torch
from tiny_models import Linear, SmallCNN

from unitscope import saliency as S
from unitscope.saliency.randomization import _average_ranks


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=g).float()  # many ties
    b = a + torch.rand(3, 40, generator=g) * 3
    got = S.spearman(a, b)
    for i in range(3):
        assert abs(got[i].item() - stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic) < 1e-12
    assert _average_ranks(torch.tensor([3.0, 1.0, 3.0])).tolist() == [1.5, 0.0, 1.5]
    assert torch.isnan(S.spearman(torch.ones(1, 5), torch.rand(1, 5)))[0]
    with pytest.raises(ValueError, match="maps must have the same shape"):
        S.spearman(torch.ones(1, 5), torch.ones(1, 4))


def test_randomization_cascade_and_restore(tmp_path):
    net = SmallCNN()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    method = S.VanillaGradient(net, reduce="signed", channel="sum")
    res = S.randomization_test(method, net, x, target=[1, 2], plot=tmp_path / "r.png")
    # default cascade: parameterized leaves from the output down
    assert res.layers == ["head.2", "features.4", "features.3", "features.1", "features.0"]
    assert res.spearman.shape == (5, 2)
    assert (res.mean() < 0.9).all()  # gradients of a randomized model are different maps
    assert (tmp_path / "r.png").stat().st_size > 1000
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])  # weights restored


def test_randomization_restores_on_error_and_checks():
    net = SmallCNN()
    x = torch.rand(1, 3, 12, 12)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    class Fails(S.VanillaGradient):
        calls = 0

        def _attribute(self, x, targets):
            Fails.calls += 1
            if Fails.calls == 2:
                raise RuntimeError("second map fails")
            return super()._attribute(x, targets)

    with pytest.raises(RuntimeError, match="second map fails"):
        S.randomization_test(Fails(net), net, x, target=0)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="model must be the model the method explains"):
        S.randomization_test(S.VanillaGradient(net), SmallCNN(seed=3), x)
    with pytest.raises(ValueError, match="layers: 'nope' is not a module"):
        S.randomization_test(S.VanillaGradient(net), net, x, layers=["nope"])


def test_randomization_layers_given_and_absolute():
    net = SmallCNN()
    x = torch.rand(1, 3, 12, 12)
    res = S.randomization_test(S.GradCAM(net, "features.5", normalize=False), net, x, target=0, layers=["head.2"], absolute=True)
    assert res.layers == ["head.2"] and res.spearman.shape == (1, 1)


def test_deletion_insertion_planted(tmp_path):
    # score = sigmoid of the mean of a 4x4 patch: a map that marks the patch deletes well, its reverse badly
    class Patch(torch.nn.Module):
        def forward(self, x):
            s = x[:, :, 2:6, 2:6].mean(dim=(1, 2, 3)) * 8 - 4
            return torch.stack([s, -s], 1)

    model = Patch().eval()
    x = torch.ones(1, 3, 12, 12)
    truth = torch.zeros(1, 12, 12)
    truth[:, 2:6, 2:6] = 1

    class Fixed(S.Attribution):
        def __init__(self, model, m):
            super().__init__(model)
            self.m = m

        def _attribute(self, x, targets):
            return self.m[:, None].expand(x.shape[0], targets.shape[1], -1, -1)

    kw = dict(target=0, steps=12, output="logits", insertion_baseline="black")
    good = S.deletion_insertion(Fixed(model, truth), model, x, plot=tmp_path / "d.png", **kw)
    bad = S.deletion_insertion(Fixed(model, 1 - truth), model, x, **kw)
    assert good.deletion.shape == (1, 13) and good.fractions[0] == 0 and good.fractions[-1] == 1
    assert good.deletion[0, 0] == pytest.approx(4.0) and good.deletion[0, -1] == pytest.approx(-4.0)
    assert good.insertion[0, 0] == pytest.approx(-4.0) and good.insertion[0, -1] == pytest.approx(4.0)
    # the patch is 16 of 144 pixels: the good order removes/inserts it within the first 2 steps
    assert good.deletion[0, 2] == pytest.approx(-4.0) and good.insertion[0, 2] == pytest.approx(4.0)
    assert good.deletion_auc[0] < bad.deletion_auc[0]
    assert good.insertion_auc[0] > bad.insertion_auc[0]
    np.testing.assert_allclose(good.deletion_auc.numpy(),
                               np.trapezoid(good.deletion.numpy(), good.fractions.numpy(), axis=1))
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_deletion_insertion_real_method_shapes():
    lin = Linear(shape=(3, 6, 5), classes=3).eval()
    x = torch.rand(2, 3, 6, 5)
    res = S.deletion_insertion(S.GradientTimesInput(lin), lin, x, steps=5, batch_size=4)
    assert res.deletion.shape == (2, 6) and res.insertion_auc.shape == (2,)
    assert torch.isfinite(res.deletion_auc).all() and ((0 <= res.deletion) & (res.deletion <= 1)).all()
