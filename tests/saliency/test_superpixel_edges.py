"""LIME and KernelSHAP at their edges (one superpixel, non-finite input) and the progress bar that the
batched methods share through the base class (show_progress)."""
import pytest
import torch
from tiny_models import Linear

from unitscope.saliency import LIME, IntegratedGradients, KernelSHAP, SmoothGrad, VanillaGradient, base, show_progress


def _one_segment(x):
    return torch.zeros(x.shape[-2:], dtype=torch.long)


def test_kernel_shap_one_superpixel_gets_the_whole_difference():
    net = Linear().eval()
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    ks = KernelSHAP(net, segments=_one_segment(x), n_samples=10, baseline="black")
    got = ks(x, [1, 3])
    with torch.no_grad():
        diff = net(x) - net(torch.zeros_like(x))  # the one superpixel's Shapley value: S(x) - S(baseline)
    expect = diff[torch.arange(2), torch.tensor([1, 3])]
    assert got.shape == (2, 6, 5)
    torch.testing.assert_close(got, expect[:, None, None].expand(2, 6, 5).float(), rtol=1e-5, atol=1e-5)
    fits = ks.explain(x, 1)
    assert fits[0].Z.shape == (0, 1) and fits[0].y.shape == (0, 1)
    # LIME on the same single superpixel runs too (its fit is ridge-shrunk, so only the shape is fixed)
    assert LIME(net, segments=_one_segment(x), n_samples=10)(x, 1).shape == (2, 6, 5)


@pytest.mark.parametrize("cls", [LIME, KernelSHAP])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused(cls, bad):
    net = Linear().eval()
    x = torch.rand(1, 3, 6, 5)
    x[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match=f"x must be finite for {cls.__name__}"):
        cls(net, segments="grid", n_segments=4, n_samples=8)(x, 0)
    with pytest.raises(ValueError, match="must be finite"):
        cls(net, segments="slic", n_segments=4, n_samples=8).explain(x, 0)


def test_non_finite_scores_are_refused():
    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * float("nan")

    with pytest.raises(ValueError, match="scores .* are not finite"):
        KernelSHAP(NaNNet().eval(), segments="grid", n_segments=4, n_samples=8)(torch.rand(1, 3, 6, 5), 0)


class _Bars:
    """Records what show_progress's tqdm bars receive."""

    def __init__(self, monkeypatch):
        import unitscope._progress

        self.made = []
        outer = self

        class Bar:
            def __init__(self, iterable=None, **kw):
                self.desc, self.total, self.n, self.closed = kw.get("desc"), kw.get("total"), 0, False
                outer.made.append(self)

            def refresh(self):
                pass

            def update(self, k):
                self.n += k

            def close(self):
                self.closed = True

        monkeypatch.setattr(unitscope._progress, "progress_bar", Bar)


def test_show_progress_counts_the_batches_of_the_outer_loop(monkeypatch):
    bars = _Bars(monkeypatch)
    net = Linear().eval()
    x = torch.rand(2, 3, 6, 5)
    ig = IntegratedGradients(net, steps=10, batch_size=4)
    with show_progress("ig"):
        ig(x, [[0, 1], [2, 3]])
    (bar,) = bars.made
    assert bar.desc == "ig" and bar.closed and bar.total == bar.n > 0
    # SmoothGrad wraps another method: only its own loop counts (3 chunks of 4 out of 2 x 5 copies)
    with show_progress("smoothgrad"):
        SmoothGrad(VanillaGradient(net), n_samples=5, batch_size=4)(x, 0)
    assert bars.made[1].total == bars.made[1].n == 3
    with show_progress("lime"):
        LIME(net, segments="grid", n_segments=4, n_samples=10, batch_size=4)(x, 0)
    assert bars.made[2].total == bars.made[2].n == 2 * (3 + 1)  # per image: 10 samples in 3 chunks + the 2 ends
    with show_progress("off", enabled=False):
        ig(x, 0)
    assert len(bars.made) == 3 and base._PROGRESS.get() is None


def test_show_progress_closes_on_error(monkeypatch):
    bars = _Bars(monkeypatch)
    with pytest.raises(ValueError, match="target classes"):
        with show_progress("ig"):
            IntegratedGradients(Linear().eval(), steps=4)(torch.rand(1, 3, 6, 5), 99)
    assert bars.made[0].closed and base._PROGRESS.get() is None
