"""`unitscope demo --quick` end to end: the README's first command, on a small generated dataset; its
four parts are written and every src/href of every page it writes resolves to a file."""
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]


def broken_links(root: Path) -> list[str]:
    """'page: link' for every local src/href of the .html files under root that names no file."""
    bad = []
    for page in sorted(root.rglob("*.html")):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or not parts.path:  # external, or an anchor in the page
                continue
            if not (page.parent / unquote(parts.path)).is_file():
                bad.append(f"{page.relative_to(root)}: {link}")
    return bad


def test_broken_links_finds_broken(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.html").write_text('<img src="../a.png"><a href="#x">x</a><a href="https://e.org">e</a>'
                                             '<img src="b.png"><a href="../sub">folder</a>')
    assert broken_links(tmp_path) == ["sub/p.html: b.png", "sub/p.html: ../sub"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    pytest.importorskip("skimage", reason="the demo's photos come with scikit-image")
    from unitscope.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_demo_quick(demo):
    out, printed = demo
    assert "detector units" in printed and "Egyptian cat" in printed
    for name in ["index.html", "saliency.png", "photos/chelsea.png", "photos/coffee.png", "dissection/index.html",
                 "dissection/_blocks.10.html", "dissection/dissection.json"]:
        assert (out / name).exists(), name
    assert len(list((out / "featviz").glob("*.png"))) == 3
    page = (out / "index.html").read_text()
    assert 'href="dissection/index.html"' in page and "4. Which concepts made each prediction" in page
    assert "LRP" in page and "DeepLift" in page  # issue 22: the newer saliency methods are in the grid
    for photo in ["chelsea", "coffee"]:  # part 4: the maps beside the concepts, with featviz and top images
        files = out / "explain" / photo
        assert len(list(files.glob("unit*_map.png"))) == 3 and len(list(files.glob("unit*_featviz.png"))) == 3
        assert f'src="explain/{photo}/image.png"' in page
    assert "predicted 'Egyptian cat'" in printed and "predicted 'espresso'" in printed


def test_demo_pages_have_no_broken_links(demo):
    out, _ = demo
    assert broken_links(out) == []
