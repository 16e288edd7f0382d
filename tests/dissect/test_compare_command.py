"""`unitscope compare`: dissection.json files and folders in, one page out; its table equals compare(),
its differences are the planted ones, names are data (escaped in HTML, no mathtext in the charts),
--rule and --iou-threshold change the counts as defined, and every user error is one line, exit 2."""
import csv

import numpy as np
import pytest

from unitscope import cli
from unitscope.dissect import Dissection, LayerDissection, compare
from unitscope.dissect.compare_command import find_runs

MARKUP = "<script>alert(1)</script>$x^{$"   # also broken mathtext: matplotlib would raise on it


def _layer(name, best, categories=("object", "texture"), K=6):
    """A layer whose unit k has best label best[k] = (label, category index, IoU), 0 elsewhere."""
    labels = sorted({(c, lab) for lab, c, _ in best} | {(c, f"other-{c}") for c in range(len(categories))})
    C = len(labels)
    iou = np.zeros((K, C))
    for k, (lab, c, v) in enumerate(best):
        iou[k, labels.index((c, lab))] = v
    z = np.zeros
    settings = {"iou_threshold": 0.04, "images": 10, "quantile": 0.995, "union": "category", "threshold_op": ">"}
    return LayerDissection(
        layer=name, thresholds=np.ones(K, np.float32), iou=iou, intersection=z((K, C), np.int64),
        activation=z((K, len(categories)), np.int64), label_count=z(C, np.int64), activation_total=z(K, np.int64),
        images=10, label_names=[lab for _, lab in labels], categories=list(categories),
        label_category=np.array([c for c, _ in labels]), topk_index=z((K, 0), np.int64),
        topk_values=z((K, 0), np.float32), topk_maps=z((K, 0, 1, 1), np.float32), minimum=z(K, np.float32),
        maximum=np.ones(K, np.float32), settings=settings)


def _runs(tmp_path):
    trained = Dissection({
        "early": _layer("early", [("stripes", 1, 0.2), ("stripes", 1, 0.1), ("dots", 1, 0.05), ("car", 0, 0.03)]),
        "late": _layer("late", [("car", 0, 0.3), ("dog", 0, 0.2), ("dog", 0, 0.15), ("stripes", 1, 0.06),
                                (MARKUP, 0, 0.5)])}, name="trained")
    random = Dissection({"late": _layer("late", [("car", 0, 0.05), ("dots", 1, 0.01)])}, name=MARKUP)
    for d in (trained, random):
        d.settings = dict(next(iter(d)).settings)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    trained.to_json(tmp_path / "a" / "dissection.json")
    random.to_json(tmp_path / "b" / "dissection.json")
    return trained, random


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_page_table_and_differences(tmp_path, capsys):
    trained, random = _runs(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b" / "dissection.json"), "--out", str(out)]) == 0
    assert "compared 2 dissection(s)" in capsys.readouterr().out
    page = (out / "compare.html").read_text()
    for png in ("unique_stacked.png", "detectors_stacked.png"):
        assert (out / png).stat().st_size > 2000 and f'src="{png}"' in page
    assert (out / "compare.png").stat().st_size > 2000
    # names are data: escaped, never markup
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;$x^{$" in page
    # the table is compare()'s: late has car, dog, MARKUP (object) and stripes (texture): 3 + 1 unique
    rows = _read_csv(out / "compare.csv")
    expect = compare(trained, random)
    assert [(r["name"], r["layer"], int(r["unique_total"])) for r in rows] == \
        [(r["name"], r["layer"], r["unique_total"]) for r in expect.rows]
    assert [int(r["unique_total"]) for r in rows] == [2, 4, 1]
    assert "<td>late</td><td>6</td><td>5</td><td>3</td><td>1</td><td>4</td><td>4</td><td>1</td>" in page
    # differences from the first run: only the shared layer 'late'; random has 1 detector (car)
    diff = page.split("Differences from trained")[1]
    assert "<td>late</td><td>1 (-4)</td><td>-2</td><td>-1</td><td>1 (-3)</td>" in diff
    assert "<td>early</td>" not in diff


def test_rule_threshold_names_and_baseline(tmp_path):
    _runs(tmp_path)
    out = tmp_path / "out"
    # a folder of run folders, taken in name order; the baseline is the second run
    assert cli.main(["compare", str(tmp_path), "--out", str(out), "--rule", "category", "--names", "T,R",
                     "--baseline", "2", "--iou-threshold", "0.1"]) == 0
    rows = _read_csv(out / "compare.csv")
    assert [r["name"] for r in rows] == ["T", "T", "R"]
    # IoU > 0.1: early has stripes (0.2) only; late car, dog, MARKUP; random's car (0.05) is gone
    assert [int(r["unique_total"]) for r in rows] == [1, 3, 0]
    page = (out / "compare.html").read_text()
    assert "Differences from R" in page and "<td>T</td><td>late</td><td>4 (+4)</td>" in page
    assert "rule &#x27;category&#x27;" in page or "rule 'category'" in page


def test_rule_category_counts_more_than_best(tmp_path):
    # unit 0's best is 'car' (object) but it is also over the threshold for 'stripes' (texture)
    ld = _layer("l", [("car", 0, 0.3)])
    ld.iou[0, ld.label_names.index("other-1")] = 0.2
    d = Dissection({"l": ld}, settings=ld.settings, name="n")
    assert compare(d).rows[0]["unique_total"] == 1
    assert compare(d, rule="category").rows[0]["unique_total"] == 2


def test_user_errors_are_one_line(tmp_path, capsys):
    _runs(tmp_path)
    out = str(tmp_path / "out")

    def fails(argv, message):
        rc = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2 and err.startswith("unitscope compare: error: ") and message in err, err

    fails(["compare", str(tmp_path / "nope"), "--out", out], "does not exist")
    fails(["compare", str(tmp_path / "a"), "--out", out, "--names", "x,y"], "--names must give one name per run (1")
    fails(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", out, "--baseline", "3"],
          "--baseline must be a run's position in 1..2, got 3")
    (tmp_path / "empty").mkdir()
    fails(["compare", str(tmp_path / "empty"), "--out", out], "no dissection.json in it nor in its subfolders")
    (tmp_path / "bad.json").write_text('{"layers": [{"layer": "x", "units": "many"}]}')
    fails(["compare", str(tmp_path / "bad.json"), "--out", out], "'units' must be a non-empty list")
    with pytest.raises(SystemExit):
        cli.main(["compare", str(tmp_path / "a"), "--out", out, "--rule", "most"])


def test_find_runs(tmp_path):
    _runs(tmp_path)
    assert find_runs([str(tmp_path)]) == [tmp_path / "a" / "dissection.json", tmp_path / "b" / "dissection.json"]
