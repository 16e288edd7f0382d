"""`unitscope demo --quick` end to end: the README's first command, on a small generated dataset."""
import pytest


def test_demo_quick(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    from unitscope.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detector units" in printed and "Egyptian cat" in printed
    for name in ["index.html", "saliency.png", "dissection/_blocks.10.html", "dissection/dissection.json"]:
        assert (out / name).exists(), name
    assert len(list((out / "featviz").glob("*.png"))) == 3
