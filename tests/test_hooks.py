"""unitscope.hooks.LayerCapture (feature visualization's capture): 'name@k' picks one call of a
reused module; without a call number a reused module is an error that suggests it."""
import pytest
import torch
from torch import nn

from unitscope.hooks import LayerCapture


def test_call_number_picks_one_call_of_a_reused_module():
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), act, nn.Conv2d(3, 3, 1), act).eval()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = act(model[0](x))
        second = act(model[2](first))
    with torch.no_grad(), LayerCapture(model, ["1@0", "1@1", "2"]) as cap:
        model(x)
    assert sorted(cap.outputs) == ["1@0", "1@1", "2"]
    torch.testing.assert_close(cap.outputs["1@0"], first, rtol=0, atol=0)
    torch.testing.assert_close(cap.outputs["1@1"], second, rtol=0, atol=0)
    assert not act._forward_hooks
    with pytest.raises(ValueError, match=r"layer '1' \(ReLU\) is called 2 times per forward pass .* pick one call "
                                         r"with '1@k' \(k = 0..1\) or a module that runs once; layers to try: 1@0, 1@1, "):
        with LayerCapture(model, "1") as cap:
            model(x)
        _ = cap.outputs
    with pytest.raises(ValueError, match="the part after '@' must be a call number, got 'x'"):
        LayerCapture(model, "1@x")
    with LayerCapture(model, "1@2") as cap:  # the module runs twice: there is no third call to record
        model(x)
    with pytest.raises(ValueError, match=r"layer '1@2': module '1' \(ReLU\) ran only 2 time\(s\) per forward pass"):
        _ = cap.outputs
    with LayerCapture(model, ["2"]) as cap:
        pass
    with pytest.raises(ValueError, match=r"layer '2' \(Conv2d\) was not called during the forward pass"):
        _ = cap.outputs
    assert not any(m._forward_hooks for m in model.modules())


def test_bad_layer_lists():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    with LayerCapture(model, []) as cap:  # (an objective of the logits alone reads no layer)
        model(torch.rand(1, 3, 2, 2))
        assert cap.outputs == {}
        with pytest.raises(ValueError, match="layers must name at least one module, got an empty list"):
            cap(torch.rand(1, 3, 2, 2))  # running the model to return maps of no layer is a mistake
    with pytest.raises(ValueError, match="layers lists a layer twice: '0'"):
        LayerCapture(model, ["1", model[0], "0"])
    with pytest.raises(TypeError, match="layer must be a module name"):
        LayerCapture(model, [3])
    with pytest.raises(TypeError, match=r"layer must be a module name \(str\) or an nn.Module, got dict"):
        LayerCapture(model, {"0": 1})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        LayerCapture("model", ["0"])
    with pytest.raises(ValueError, match="this capture holds 2 layers"):
        _ = LayerCapture(model, ["0", "1"]).output


class Pair(nn.Module):
    def forward(self, x):
        return x * 2, x.sum()


class TupleNet(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.pair, self.kind = Pair(), kind

    def forward(self, x):
        out = self.pair(x)
        if self.kind == "dict":
            return out
        a, b = out
        a += 1  # in place, after the capture
        return a.mean() + b


def test_tuple_outputs_are_captured_by_their_first_element_and_the_rest_untouched():
    x = torch.rand(1, 2, 3, 3, requires_grad=True)
    model = TupleNet("tuple")
    with LayerCapture(model, "pair") as cap:
        y = model(x)
    torch.testing.assert_close(cap.output, x * 2, rtol=0, atol=0)  # before the model's `a += 1`
    torch.testing.assert_close(y, (x * 2 + 1).mean() + x.sum())
    (g,) = torch.autograd.grad(y, cap.output)  # in the graph: d y / d (pair's first output)
    torch.testing.assert_close(g, torch.full_like(g, 1 / 18))


def test_detach_is_an_option_and_in_place_changes_never_reach_the_capture():
    conv = nn.Conv2d(3, 4, 1)
    model = nn.Sequential(conv, nn.ReLU(inplace=True)).eval()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expect = conv(x)
    assert (expect < 0).any()  # the in-place ReLU would change them
    for detach in (False, True):
        with LayerCapture(model, ["0", "1"], detach=detach) as cap:
            y = model(x)
        torch.testing.assert_close(cap.outputs["0"], expect, rtol=0, atol=0)
        torch.testing.assert_close(cap.outputs["1"], expect.clamp(min=0), rtol=0, atol=0)
        torch.testing.assert_close(y, expect.clamp(min=0), rtol=0, atol=0)
        assert cap.outputs["0"].requires_grad is not detach


def test_call_runs_the_model_and_cuts_it_short_after_the_first_forward():
    ran = []
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1))
    model[2].register_forward_hook(lambda *a: ran.append(1))
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad(), LayerCapture(model, ["0", "1"]) as cap:
        first = cap(x)
        second = cap(x)
        assert len(ran) == 1  # the first call runs the whole forward (its calls are checked), not the next
        full = cap.full(x)
    for out in (second, full):
        for k in first:
            torch.testing.assert_close(out[k], first[k], rtol=0, atol=0)
    assert (first["0"] < 0).any() and torch.equal(first["1"], first["0"].clamp(min=0))


def test_unknown_layer_error_points_to_the_layer_lister_and_keeps_close_names():
    from unitscope.hooks import resolve_layer

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError) as e:
        resolve_layer(model, "00")
    message = str(e.value)
    assert message.startswith("layer '00' is not a module of the model; similar names: 0")
    assert message.endswith("; unitscope.layers(model, input_size) (or `unitscope layers --model ...`) lists them")
    with pytest.raises(ValueError, match=r"lists them"):  # also without close names
        with LayerCapture(model, "zzz_nothing_like_it"):
            model(torch.zeros(1, 3, 8, 8))
