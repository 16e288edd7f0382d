"""unitscope._io: atomic writes under unique temporary names (issue 19 part 3: two runs sharing --out
lost writes to the fixed `saliency.html.tmp`)."""
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from unitscope import viz
from unitscope._io import atomic_path, atomic_paths, atomic_write_text

ROOT = Path(__file__).resolve().parents[1] / "python" / "unitscope"


def test_concurrent_writers_of_one_target_never_collide(tmp_path):
    target = tmp_path / "page.html"
    pages = [f"<p>writer {i}</p>" * 2000 for i in range(8)]
    errors = []
    start = threading.Barrier(len(pages))

    def write(page):
        start.wait()
        try:
            for _ in range(20):
                atomic_write_text(target, page)
        except Exception as e:  # a fixed temporary name: one writer renames the other's file away
            errors.append(e)

    threads = [threading.Thread(target=write, args=(p,)) for p in pages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert target.read_text() in pages  # whole, one writer's
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_two_open_writers_get_distinct_temporaries_in_the_target_folder(tmp_path):
    with atomic_path(tmp_path / "a.png") as t1, atomic_path(tmp_path / "a.png") as t2:
        assert t1 != t2 and t1.parent == t2.parent == tmp_path
        assert t1.suffix == ".png"  # PIL and NumPy pick the format from the name
        t1.write_text("one")
        t2.write_text("two")
    assert (tmp_path / "a.png").read_text() == "one"  # the outer block ended last


def test_failure_keeps_the_old_file_and_removes_temporaries(tmp_path):
    (tmp_path / "x.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_paths(tmp_path / "x.txt", tmp_path / "y.txt") as (a, b):
            a.write_text("new")
            b.write_text("new")
            raise RuntimeError("disk full")
    assert (tmp_path / "x.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_permissions_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p.txt").stat().st_mode) == 0o644


def test_images_are_written_through_it(tmp_path):
    img = np.zeros((4, 5, 3), np.uint8)
    viz.save_image(img, tmp_path / "i.png")
    viz.save_grid([img, img], tmp_path / "g.png", titles=["a", "b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "i.png"]


@pytest.mark.parametrize("module", ["saliency/command.py", "featviz/command.py", "viz.py", "data/pack.py"])
def test_no_fixed_temporary_names_remain(module):
    source = (ROOT / module).read_text()
    assert ".tmp" not in source and "os.replace" not in source, module


def test_two_saliency_runs_sharing_out_both_write_their_page(tmp_path):
    # the page used to go through the fixed name saliency.html.tmp: a second run truncated or renamed
    # the first one's temporary away (FileNotFoundError, or a page cut short)
    from argparse import Namespace

    from unitscope.saliency.command import PAGE, _write_html

    errors = []
    start = threading.Barrier(6)

    def run(i):
        args = Namespace(out=str(tmp_path), image=f"photo{i}.png", model="m")
        rows = [{"class": c, "name": f"c{c}", "probability": 0.5, "files": {"gradcam": f"g{c}.png"}} for c in range(300)]
        start.wait()
        try:
            for _ in range(30):
                _write_html(args, rows, ["gradcam"], "layer", {"gradcam": 0.1})
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    page = (tmp_path / PAGE).read_text()
    assert page.endswith("</html>") and page.count("<tr>") == 301
    assert [p.name for p in tmp_path.iterdir()] == [PAGE]
