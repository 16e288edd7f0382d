"""unitscope._compile.Runner: when "auto" compiles, the fallback to eager when compiling fails, and a
real compiled dissection against the eager one on the planted model."""
import warnings

import pytest
import torch

import unitscope
from unitscope import _compile
from unitscope._compile import TRIAL_CALLS, Runner, check_compile


class FakeCompile:
    """Stands in for torch.compile: records what it was asked to compile; `fail` makes the
    compiled function raise as a compiler error would."""

    def __init__(self, fail=False):
        self.fail, self.compiled = fail, []

    def __call__(self, fn, dynamic=None):
        self.compiled.append(fn)

        def run(*args):
            if self.fail:
                raise RuntimeError("backend compiler failed\nsecond line")
            return ("compiled", fn(*args))
        return run


@pytest.fixture
def fake(monkeypatch):
    f = FakeCompile()
    monkeypatch.setattr(_compile.torch, "compile", f)
    return f


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "AUTO"])
def test_check_compile_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"compile must be 'auto', True or False, got"):
        check_compile(bad)
    with pytest.raises(ValueError, match="compile must be"):
        unitscope.dissect(torch.nn.Identity(), ["x"], "nowhere", compile=bad)


def test_false_never_compiles(fake):
    r = Runner(lambda x: x + 1, False)
    for _ in range(3):
        assert r(1) == 2
    r.plan(10**9)
    assert r(1) == 2 and not r.compiled and fake.compiled == []


def test_true_compiles_at_first_call(fake):
    r = Runner(lambda x: x + 1, True)
    assert r(1) == ("compiled", 2) and r.compiled


def test_auto_compiles_only_when_the_saving_pays(fake):
    r = Runner(lambda x: x, "auto")
    r.plan(10**6)                       # nothing timed yet: no decision
    assert not r.compiled
    r(0)
    r.plan(10**6)                       # one call (with its one-time costs) is not a basis either
    assert not r.compiled
    r(0)
    r.fastest_call = 1.0                # 1 s a call: 100 calls save 100 * (1 - 1/2.5) = 60 s < 1.25 x 50 s
    r.plan(100)
    assert not r.compiled
    r.plan(1000)                        # 600 s saved: compile
    assert r.compiled and r(3) == ("compiled", 3)


def test_auto_logs_one_line_with_the_saving(fake):
    lines = []
    r = Runner(lambda x: x, "auto", log=lines.append)
    r(0)
    r(0)
    r.fastest_call = 0.5
    r.plan(3000)                        # 3000 * 0.5 * (1 - 1/2.5) = 900 s
    assert len(lines) == 1 and "compiling the model" in lines[0] and "saves ~15 min" in lines[0]


def test_traced_function_is_what_gets_compiled(fake):
    def eager(x):
        return x

    def traced(x):
        return x
    r = Runner(eager, True, traced=traced)
    r(1)
    assert fake.compiled == [traced]


def test_pad_runs_a_smaller_batch_at_the_compiled_size(fake):
    """A dataset's last, smaller batch goes through the graph of the first batch's size (padded with
    copies of its last image) and comes back cut to its own images; totals are left alone."""
    seen = []

    def fn(x):
        seen.append(tuple(x.shape))
        return {"rows": x * 2, "pair": (x[:, :1], x.sum())}
    r = Runner(fn, True, pad=True)
    r(torch.ones(4, 2))
    x = torch.arange(6.0).view(3, 2)
    _, out = r(x)
    assert seen == [(4, 2), (4, 2)]
    torch.testing.assert_close(out["rows"], x * 2)
    torch.testing.assert_close(out["pair"][0], x[:, :1])
    assert float(out["pair"][1]) == float(x.sum() + x[-1].sum())  # a batch total is not cut: pad=False for those
    _, big = r(torch.ones(6, 2))     # a larger batch is passed as it is (torch compiles it once more)
    assert seen[-1] == (6, 2) and big["rows"].shape == (6, 2)


def test_without_pad_batches_pass_unchanged(fake):
    seen = []
    r = Runner(lambda x: seen.append(tuple(x.shape)) or x, True)
    r(torch.ones(4, 2))
    r(torch.ones(3, 2))
    assert seen == [(4, 2), (3, 2)]


def test_prepare_runs_before_each_compiled_call_only(fake):
    calls = []
    r = Runner(lambda x: calls.append("fn") or x, "auto", prepare=lambda: calls.append("prepare"))
    r(1)                                   # eager: the caller's own function handles its state
    r(1)
    r.fastest_call = 10.0
    r.plan(100)
    r(1)
    r(1)
    assert calls == ["fn", "fn", "prepare", "fn", "prepare", "fn"]


def _formats_seen(slow_contiguous):
    """fn recording each call's input format; contiguous calls take longer when slow_contiguous."""
    import time as _time
    seen = []

    def fn(x):
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        seen.append("cl" if cl else "contiguous")
        _time.sleep(0.02 if cl == (not slow_contiguous) else 0.0)
        return x.sum()
    return fn, seen


@pytest.mark.parametrize("slow_contiguous", [True, False])
def test_auto_tries_channels_last_and_keeps_the_faster(slow_contiguous):
    fn, seen = _formats_seen(slow_contiguous)
    r = Runner(fn, "auto", channels_last=True)
    x = torch.rand(2, 3, 4, 4)
    for _ in range(7):
        assert float(r(x)) == pytest.approx(float(x.sum()))
    keep = "cl" if slow_contiguous else "contiguous"
    assert seen[:4] == ["contiguous", "cl", "contiguous", "cl"] and seen[4:] == [keep] * 3
    assert r.channels_last is slow_contiguous


def test_auto_decides_only_after_the_channels_last_trial(fake):
    r = Runner(lambda x: x, "auto", channels_last=True)
    x = torch.rand(1, 1, 2, 2)
    for _ in range(TRIAL_CALLS - 1):
        r(x)
        r.fastest_call = 100.0
        r.plan(10**6)
        assert not r.compiled
    r(x)
    r.fastest_call = 100.0
    r.plan(10**6)
    assert r.compiled


def test_the_channels_last_trial_ends_when_the_setting_changes_after_it_began():
    """dissect sets a resumed 'auto' run's setting to the checkpoint's (False: eager) after the
    Runner was built: the trial still ends with one format kept, not alternating for ever."""
    fn, seen = _formats_seen(slow_contiguous=True)
    r = Runner(fn, "auto", channels_last=True)
    r.setting = False
    for _ in range(7):
        r(torch.rand(2, 3, 4, 4))
    assert seen[:4] == ["contiguous", "cl", "contiguous", "cl"] and seen[4:] == ["cl"] * 3


def test_channels_last_only_with_auto_and_only_for_image_batches():
    for setting in (False, True):
        fn, seen = _formats_seen(True)
        r = Runner(fn, setting, channels_last=True)
        if setting is True:
            r._compile = lambda: None  # stay eager: this is about the input's format
        for _ in range(5):
            r(torch.rand(2, 3, 4, 4))
        assert seen == ["contiguous"] * 5
    seen = []
    r = Runner(lambda x: seen.append(x.is_contiguous()) or x, "auto", channels_last=True)
    for _ in range(5):
        r(torch.rand(2, 3))  # not (B, C, H, W): left alone
    assert seen == [True] * 5


def test_a_function_failing_on_channels_last_runs_on_the_batch_as_given():
    def fn(x):
        return x.view(x.shape[0], -1).sum(1)  # view() fails on a channels_last tensor
    r = Runner(fn, "auto", channels_last=True)
    x = torch.rand(2, 3, 4, 4)
    for _ in range(5):
        torch.testing.assert_close(r(x), x.reshape(2, -1).sum(1))
    assert r.channels_last is False


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    monkeypatch.setattr(_compile.torch, "compile", FakeCompile(fail=True))
    r = Runner(lambda x: x * 2, True)
    with pytest.warns(UserWarning, match=r"could not compile the model \(RuntimeError: backend compiler failed\); "
                                         r"running it eagerly") as rec:
        assert r(2) == 4
    assert len(rec) == 1 and "second line" not in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no second warning, no second try
        assert r(3) == 6 and not r.compiled and r.failed


def test_callers_own_error_is_not_masked(monkeypatch):
    monkeypatch.setattr(_compile.torch, "compile", FakeCompile(fail=True))

    def broken(x):
        raise ValueError("x must be positive, got -1")
    with pytest.raises(ValueError, match="x must be positive"):
        Runner(broken, True)(-1)


def test_real_compile_matches_eager():
    """torch.compile for real on a small conv net, several batch sizes through one graph."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    r = Runner(net, True)
    with torch.no_grad():
        for b in (3, 5, 2):
            x = torch.randn(b, 3, 9, 7)
            torch.testing.assert_close(r(x), net(x), rtol=1e-5, atol=1e-5)
    assert r.compiled and r.verified and not r.failed


def test_dissect_compiled_equals_eager(tmp_path):
    from torch._dynamo.utils import counters

    from dissect.test_planted import Planted, identity, make_planted_dataset
    from unitscope.data import BrodenDataset
    ds = BrodenDataset(make_planted_dataset(tmp_path / "ds"))
    assert len(ds) % 7 != 0  # a smaller last batch
    eager = unitscope.dissect(Planted(), ["units"], ds, batch_size=7, preprocess=identity, progress=False,
                              compile=False)
    torch._dynamo.reset()
    counters.clear()
    comp = unitscope.dissect(Planted(), ["units"], ds, batch_size=7, preprocess=identity, progress=False,
                             compile=True, checkpoint_dir=tmp_path / "ckpt")
    # one graph, compiled once: no recompile for the last batch or for the hooks' per-call state
    assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["total"] == 1, dict(counters["stats"])
    assert comp.settings["compiled"] is True and eager.settings["compiled"] is False
    e, c = eager["units"], comp["units"]
    torch.testing.assert_close(torch.as_tensor(c.thresholds), torch.as_tensor(e.thresholds), rtol=1e-6, atol=1e-6)
    assert abs(c.iou - e.iou).max() < 1e-3
    assert [d["label"] for d in c.detectors()] == [d["label"] for d in e.detectors()] == ["spot", "blob"]
    state = torch.load(tmp_path / "ckpt" / "dissect.pt", weights_only=True)
    assert state["compiled"] is True and state["key"]["compile"] is True
    # the checkpoint belongs to a compiled run: an eager rerun on it is refused, not mixed
    with pytest.raises(ValueError, match="compile"):
        unitscope.dissect(Planted(), ["units"], ds, batch_size=7, preprocess=identity, progress=False,
                          compile=False, checkpoint_dir=tmp_path / "ckpt")


def test_saliency_compiled_equals_eager():
    """The many-pass methods through a compiled forward (with autograd for integrated gradients and
    SmoothGrad) give the eager maps to float tolerance; the one-pass CAM forward stays eager."""
    from saliency.tiny_models import GapNet
    from unitscope import saliency
    torch.manual_seed(1)
    net = GapNet().eval()
    x = torch.rand(2, 3, 12, 10)
    for make in (lambda c: saliency.IntegratedGradients(net, steps=6, batch_size=4, compile=c),
                 lambda c: saliency.SmoothGrad(saliency.VanillaGradient(net), n_samples=3, batch_size=2, compile=c),
                 lambda c: saliency.Occlusion(net, window=4, stride=3, batch_size=5, compile=c),
                 lambda c: saliency.ScoreCAM(net, "act", batch_size=3, compile=c, normalize=False)):
        eager, comp = make(False), make(True)
        torch.testing.assert_close(comp(x, target=[1, 3]), eager(x, target=[1, 3]), rtol=1e-4, atol=1e-5)
        runner = comp.method._runner if isinstance(comp, saliency.SmoothGrad) else comp._runner
        assert runner.compiled and not runner.failed and not eager._runner.compiled


def test_smoothgrad_never_compiles_guided_backprop(monkeypatch):
    """Guided backprop changes the backward through hooks of its own: not through a compiled graph."""
    from saliency.tiny_models import GapNet
    from unitscope import saliency
    monkeypatch.setattr(_compile.torch, "compile", FakeCompile())
    sg = saliency.SmoothGrad(saliency.GuidedBackprop(GapNet().eval()), n_samples=2, compile=True)
    sg(torch.rand(1, 3, 8, 8), target=0)
    assert not sg.method._runner.compiled


@pytest.mark.parametrize("bad", ["two", -1, 1.5, True])
def test_num_workers_checked(bad):
    with pytest.raises(ValueError, match="num_workers must be 'auto' or an int >= 0"):
        unitscope.dissect(torch.nn.Identity(), ["x"], "nowhere", num_workers=bad)


def test_dissect_cli_compile_flags():
    from unitscope.cli import build_parser
    base = ["dissect", "--model", "m", "--layers", "a", "--dataset", ".", "--out", "o"]
    p = build_parser()
    assert p.parse_args(base).compile == "auto" and p.parse_args(base).workers == "auto"
    assert p.parse_args(base + ["--compile"]).compile is True
    assert p.parse_args(base + ["--no-compile", "--workers", "0"]).compile is False
    assert p.parse_args(base + ["--workers", "3"]).workers == 3


def test_featviz_render_compiled_equals_eager():
    """The render loop's forward+backward through torch.compile: the same images to float rounding
    carried through a few Adam steps, the same objective history."""
    from saliency.tiny_models import GapNet
    from unitscope import featviz
    torch.manual_seed(2)
    net = GapNet().eval()
    obj = featviz.channel("act", [1, 3])
    kw = dict(size=16, steps=4, preprocess=None, progress=False)
    eager = featviz.render(net, obj, compile=False, **kw)
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="unitscope: could not compile")  # no silent fallback
        comp = featviz.render(net, obj, compile=True, **kw)
    assert counters["frames"]["total"] == 1, dict(counters["stats"])  # compiled once: no recompile per step
    torch.testing.assert_close(comp.images, eager.images, rtol=1e-4, atol=1e-4)
    assert comp.history == pytest.approx(eager.history, rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="compile must be"):
        featviz.render(net, obj, compile="sometimes", **kw)


def test_auto_workers_use_only_free_cores(monkeypatch):
    from unitscope.dissect import forward as run
    monkeypatch.setattr(run.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(run.torch, "get_num_threads", lambda: 2)
    assert run.auto_workers(100) == 0 and run.auto_workers(1000) == 4
    monkeypatch.setattr(run.torch, "get_num_threads", lambda: 6)
    assert run.auto_workers(1000) == 2
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(run.torch, "get_num_threads", lambda: 2)
    assert run.auto_workers(10**6) == 0
