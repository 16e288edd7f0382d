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
    with pytest.raises(RuntimeError, match=r"layer '1' \(ReLU\) ran more than once .* name one call \('1@k'"):
        with LayerCapture(model, "1"):
            model(x)
    with pytest.raises(ValueError, match="the part after '@' must be a call number, got 'x'"):
        LayerCapture(model, "1@x")
    with LayerCapture(model, "1@2") as cap:  # the module runs twice: there is no third call to record
        model(x)
    assert cap.outputs == {}
