"""Hostile input end to end: a Broden dataset whose category and label names are formulas, markup,
mathtext and path tricks, layers whose names collide as file names, and tampered dissection
checkpoints (hypothesis: random corruption of any field, and well-formed forgeries of the
checkpoint's own fields, must give the untampered result or a CheckpointError, never a crash)."""
import collections
import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitscope
from unitscope.data import BrodenDataset, BrodenFormatError, make_concept_dataset
from unitscope.dissect import CheckpointError
from unitscope.dissect.checkpoint import content_digest

CATEGORY_NAMES = {"color": "$c^$ olor", "object": "=1+2", "part": "<b onclick=x>part", "scene": "@scene",
                  "texture": 'tex,ture "q"'}
LABEL_NAMES = ['=HYPERLINK("http://evil.example","x")', "$\\frac{a}{b}$", "<img src=x onerror=alert(1)>",
               "\tTAB", "+cmd|' /C calc'!A0", "-2+3", "multi\nline", "\rCR", "@SUM(A1)"]


def _rewrite_csv(path, fn):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = fn(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def make_hostile(root, categories=CATEGORY_NAMES):
    """A generated dataset with its categories renamed by `categories` and labels 1.. renamed to
    LABEL_NAMES (the rest keep their names)."""
    make_concept_dataset(root, 8, size=32, seed=4)
    rename = lambda c: categories.get(c, c)  # noqa: E731

    def labels(rows):
        head, out = rows[0], [rows[0]]
        for r in rows[1:]:
            r = dict(zip(head, r))
            n = int(r["number"])
            if 1 <= n <= len(LABEL_NAMES):
                r["name"] = LABEL_NAMES[n - 1]
            r["category"] = ";".join(f"{rename(p.split('(')[0])}({p.split('(')[1]}" for p in r["category"].split(";") if p)
            out.append([r[h] for h in head])
        return out
    _rewrite_csv(root / "label.csv", labels)
    _rewrite_csv(root / "category.csv", lambda rows: [rows[0]] + [[rename(r[0])] + r[1:] for r in rows[1:]])
    _rewrite_csv(root / "index.csv", lambda rows: [[rename(h) for h in rows[0]]] + rows[1:])
    for old, new in categories.items():
        if "/" in new or "\\" in new:
            continue  # cannot be a file name: the reader must refuse the category before looking for it
        (root / f"c_{old}.csv").rename(root / f"c_{new}.csv")
    return root


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return make_hostile(tmp_path_factory.mktemp("hostile") / "ds")


def colliding_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(collections.OrderedDict([
        ("a/b", torch.nn.Conv2d(3, 5, 5, stride=4, padding=2)), ("a_b", torch.nn.ReLU()),
        ("A_b", torch.nn.Identity()), ("index", torch.nn.Identity()), ("$x$", torch.nn.Identity())]))


LAYERS = ["a/b", "a_b", "A_b", "index", "$x$"]


def _is_number(cell):
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_hostile_names_reach_no_path_formula_markup_or_mathtext(hostile, tmp_path):
    ds = BrodenDataset(hostile)
    assert ds.categories == list(CATEGORY_NAMES.values())
    assert ds.label_names[1:1 + len(LABEL_NAMES)] == [n.strip() for n in LABEL_NAMES]  # the reader strips cells
    d = unitscope.dissect(colliding_model(), LAYERS, ds, batch_size=4, progress=False, iou_threshold=0.0)
    d.name = "<i>run</i> $1$ =2"
    # file names: five layers, five distinct stems, none the report's own index
    stems = d.file_stems()
    assert len({s.lower() for s in stems.values()}) == 5 and "index" not in {s.lower() for s in stems.values()}
    assert stems["a_b"] == "a_b" and all(set(s) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                      "0123456789-_.") for s in stems.values())
    csvs = d.to_csv(tmp_path / "csv")
    assert len(set(csvs)) == 5 and all(p.parent == tmp_path / "csv" for p in csvs)
    index = d.save_report(tmp_path / "report")          # '$' in names: no mathtext error, an index.html
    pages = sorted(p.name for p in (tmp_path / "report").glob("*.html"))
    assert len(pages) == 6 and index.name == "index.html"
    assert len(list((tmp_path / "report").glob("*_unique.png"))) == 5
    assert {p.resolve().parent for p in (tmp_path / "report").rglob("*")} <= \
        {(tmp_path / "report").resolve()} | {(tmp_path / "report" / s).resolve() for s in stems.values()}
    # markup: every name escaped in every page
    text = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "report").glob("*.html"))
    for raw in ("<b onclick", "<img src=x", "<i>run</i>"):
        assert raw not in text
    assert "&lt;b onclick=x&gt;part" in index.read_text(encoding="utf-8")
    # CSV: no text cell a spreadsheet would evaluate; names are still all there, escaped
    for path in csvs:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        for row in rows:
            for cell in row:
                if len(cell) > 1 and not _is_number(cell):
                    assert cell[0] not in "=+-@\t\r", (path.name, cell)
        assert "'=1+2-label" in rows[0] and "'@scene-iou" in rows[0] and rows[0][-1] == "unit_0based"
        names = {c for row in rows[1:] for c in row}
        assert {c for c in names if c.startswith("'")} <= {"'" + n.strip() for n in LABEL_NAMES + list(CATEGORY_NAMES.values())}
    ld = d["a_b"]
    # JSON keeps names as data
    data = json.loads(d.to_json())
    assert data["name"] == d.name and [l["layer"] for l in data["layers"]] == LAYERS
    # compare(): CSV escaped, chart with mathtext-like names written
    cmp = unitscope.compare(d, names=["=cmd"])
    cmp.save(tmp_path / "cmp")
    with open(tmp_path / "cmp" / "compare.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[1][0] == "'=cmd" and "'=1+2" in rows[0] and (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    assert ld.num_units == 5


def test_csv_cell_escapes_formula_starts_only():
    from unitscope.dissect.result import csv_cell
    for bad in LABEL_NAMES:
        if bad[0] in "=+-@\t\r":
            assert csv_cell(bad) == "'" + bad
    for fine in ("-", "=", "person", "$x$", "<b>", 3, -1.5):
        assert csv_cell(fine) == fine


@pytest.mark.parametrize("name", ["x/../../../outside", "..\\..\\outside"])
def test_category_climbing_out_of_the_root_is_refused(tmp_path, name):
    (tmp_path / "outside.csv").write_text("code,number,name,frequency,coverage\n0,0,-,0,0\n")
    root = make_hostile(tmp_path / "a" / "b" / "c" / "ds", dict(CATEGORY_NAMES, part=name))
    with pytest.raises(BrodenFormatError, match=r"category.csv line 4: category name .* cannot name a file"):
        BrodenDataset(root)


# ---- tampered dissection checkpoints ---------------------------------------------------------
class Flaky(BrodenDataset):
    fail_at, fail_field = None, None

    def __getitem__(self, i):
        if self.fail_at is not None and i >= self.fail_at and self.fail_field in self.fields:
            raise RuntimeError("simulated interruption")
        return super().__getitem__(i)


def tamper_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4, padding=2), torch.nn.ReLU())


def _dissect(root, ckpt, fail=None):
    ds = Flaky(root)
    ds.fail_at, ds.fail_field = (4, fail) if fail else (None, None)
    return unitscope.dissect(tamper_model(), ["0", "1"], ds, batch_size=2, checkpoint_dir=ckpt,
                             checkpoint_every=1, progress=False)


def _summary(d):
    return {l.layer: (l.thresholds.copy(), l.iou.copy(), l.intersection.copy(), l.topk_index.copy(),
                      l.topk_maps.copy()) for l in d}


class Saved(tuple):
    def __repr__(self):  # hypothesis prints the fixture with a failing example: keep it short
        return "Saved(...)"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{stage: checkpoint bytes} for a run stopped in pass 1, one stopped in pass 2, a finished one;
    and the untampered result."""
    base = tmp_path_factory.mktemp("tamper")
    root = make_concept_dataset(base / "ds", 8, size=32, seed=5)
    out = {}
    for stage, fail in (("threshold", "image"), ("tally", "labels"), ("done", None)):
        ckpt = base / stage
        if fail:
            with pytest.raises(RuntimeError, match="simulated"):
                _dissect(root, ckpt, fail)
        else:
            result = _summary(_dissect(root, ckpt))
        state = torch.load(ckpt / "dissect.pt", weights_only=True)
        assert state["stage"] == stage
        out[stage] = (ckpt / "dissect.pt").read_bytes()
    return Saved((root, out, result))


def _paths(v, prefix=()):
    """Every (path, value) inside nested dicts/lists/tuples, containers included."""
    yield prefix, v
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, prefix + (k,))
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            yield from _paths(x, prefix + (i,))


def _replace(v, path, new):
    if not path:
        return new
    if isinstance(v, dict):
        out = dict(v)
        if new is _DELETE and len(path) == 1:
            out.pop(path[0])
            return out
        out[path[0]] = _replace(v[path[0]], path[1:], new)
        return out
    items = list(v)
    items[path[0]] = _replace(v[path[0]], path[1:], new)
    return type(v)(items)


_DELETE = object()
PLAIN = st.sampled_from([None, True, False, 0, -1, 1, 7, 2**40, -2**63, 1.5, float("nan"), float("inf"), "",
                         "x", "threshold", "done", [], {}, (1, 2), [8, 4, 4], {"x": 1}])


@st.composite
def mutation(draw, value):
    """A value to put in place of `value`: another type, a near copy (one element changed, other
    dtype, other shape, NaN), or a deletion."""
    kind = draw(st.sampled_from(["plain", "tensor", "near", "delete"]))
    if kind == "plain":
        return draw(PLAIN)
    if kind == "delete":
        return _DELETE
    if kind == "tensor":
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.int32, torch.bool, torch.uint8]))
        return torch.zeros(shape, dtype=dtype) + (draw(st.integers(-3, 3)) if dtype != torch.bool else 0)
    if isinstance(value, torch.Tensor) and value.numel():
        how = draw(st.sampled_from(["element", "dtype", "shape", "nan"]))
        t = value.clone()
        if how == "dtype":
            return t.to(torch.float64 if t.dtype != torch.float64 else torch.float32)
        if how == "shape":
            return t.reshape(-1)[:-1] if t.numel() > 1 else t.reshape(1, -1)
        i = draw(st.integers(0, t.numel() - 1))
        flat = t.reshape(-1)
        if how == "nan" and t.is_floating_point():
            flat[i] = float("nan")
        elif t.dtype == torch.bool:
            flat[i] = ~flat[i]
        else:
            flat[i] = flat[i] + draw(st.sampled_from([1, -1, 1000, -10**6]))
        return t
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + draw(st.sampled_from([1, -1, 10**9, -10**9]))
    if isinstance(value, str):
        return value + draw(st.sampled_from(["x", "\0", "../"]))
    return draw(PLAIN)


def _draw_path(data, paths):
    """A path, drawn level by level (so that a field deep inside has the same chance as a shallow one)."""
    prefix = ()
    while True:
        here = [p for p in paths if p[:len(prefix)] == prefix]
        children = sorted({p[len(prefix)] for p in here if len(p) > len(prefix)}, key=repr)
        stop = prefix in paths
        if not children or (stop and data.draw(st.booleans())):
            return prefix
        prefix = prefix + (data.draw(st.sampled_from(children)),)


def _outcome(root, ckpt_dir, tampered, expect):
    """Resume from `tampered`: the untampered result or a CheckpointError, nothing else."""
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir()
    torch.save(tampered, ckpt_dir / "dissect.pt")
    try:
        got = _summary(_dissect(root, ckpt_dir))
    except CheckpointError as e:
        assert "checkpoint" in str(e)
        return "refused"
    for layer, arrays in expect.items():
        for a, b in zip(arrays, got[layer]):
            assert np.array_equal(a, b), "a tampered checkpoint changed the result silently"
    return "same"


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), stage=st.sampled_from(["threshold", "tally", "done"]))
def test_random_corruption_of_any_field_is_refused(saved, tmp_path_factory, data, stage):
    root, blobs, expect = saved
    state = torch.load(io.BytesIO(blobs[stage]), weights_only=True)
    paths = [p for p, _ in _paths(state) if p and p[0] != "digest"]
    path = _draw_path(data, paths)
    value = dict(_paths(state))[path]
    new = data.draw(mutation(value))
    if new is _DELETE and not isinstance(dict(_paths(state))[path[:-1]], dict):
        new = None
    tampered = _replace(state, path, new)
    same = content_digest({k: v for k, v in tampered.items() if k != "digest"}) == tampered["digest"]
    got = _outcome(root, tmp_path_factory.mktemp("c"), tampered, expect)
    assert got == ("same" if same else "refused"), (path, new)


ENVELOPE = ("key", "probe", "stage", "done", "shapes", "format", "version", "layers")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), stage=st.sampled_from(["threshold", "tally", "done"]))
def test_forged_envelope_fields_give_the_same_result_or_a_clear_error(saved, tmp_path_factory, data, stage):
    """The digest recomputed after the edit (a forger, not bit rot): the checkpoint's own fields are
    still validated one by one. Values inside the kernel states are theirs to validate; top-k and
    threshold entries are forged here only into malformed values (a well-formed forgery of a
    threshold is a different, valid checkpoint)."""
    root, blobs, expect = saved
    state = torch.load(io.BytesIO(blobs[stage]), weights_only=True)
    paths = [p for p, _ in _paths(state) if p and p[0] in ENVELOPE
             and not (p[0] == "layers" and len(p) > 2 and p[2] != "thresholds")]
    path = _draw_path(data, paths)
    value = dict(_paths(state))[path]
    new = data.draw(mutation(value))
    if new is _DELETE and not isinstance(dict(_paths(state))[path[:-1]], dict):
        new = None
    if path[-1] == "thresholds" and isinstance(new, torch.Tensor) and new.dtype == torch.float32 \
            and new.shape == value.shape and not bool(new.isnan().any()):
        new = new.double()  # well formed: a valid forgery, not what this test is about
    tampered = _replace(state, path, new)
    tampered["digest"] = content_digest({k: v for k, v in tampered.items() if k != "digest"})
    _outcome(root, tmp_path_factory.mktemp("f"), tampered, expect)


@pytest.mark.parametrize("stage", ["threshold", "done"])
@pytest.mark.parametrize("edit, match", [
    # an index past the images is only known to the checkpoint; the others TopKImages refuses itself
    (lambda ix: ix.__setitem__((0, 0), 100), r"top-k image indices must be -1 or in \[0, "),
    (lambda ix: ix.__setitem__((0, 0), -2), r"top-k image indices must be -1 or in|must be in \[-1, inf\], got -2"),
    (lambda ix: ix.__setitem__((0, 1), int(ix[0, 0])), "keeps an image twice|repeats an image"),
    (lambda ix: ix.__setitem__((1, 0), -1), "every unit must keep|must be -inf exactly where index is -1"),
])
def test_forged_topk_indices_refused(saved, tmp_path, stage, edit, match):
    """A forger who recomputes every digest (the top-k state's own and the checkpoint's)."""
    from unitscope.kernels._state import with_digest
    root, blobs, expect = saved
    state = torch.load(io.BytesIO(blobs[stage]), weights_only=True)
    topk = state["layers"]["1"]["topk"]
    edit(topk["index"])
    with_digest(topk)
    state["digest"] = content_digest({k: v for k, v in state.items() if k != "digest"})
    torch.save(state, tmp_path / "dissect.pt")
    with pytest.raises(CheckpointError, match=match):
        _dissect(root, tmp_path)


def _nan_threshold(s):
    s["layers"]["1"]["thresholds"][2] = float("nan")


def test_forged_fields_refused(saved, tmp_path):
    root, blobs, _ = saved
    for stage, edit, match in (("threshold", lambda s: s.update(done=2), "top-k image indices|counted"),
                               ("tally", lambda s: s.update(done=6), "the tally counted 4 images, expected 6"),
                               ("done", lambda s: s.update(stage="tally", done=0), "done is 0 but|tally counted"),
                               ("tally", _nan_threshold, r"layers\['1'\]\['thresholds'\] holds NaN"),
                               ("done", lambda s: s["shapes"].update({"1": (4, 8, 9)}), "shapes must be"),
                               ("done", lambda s: s["probe"]["0"].mul_(1.01), r"outputs at \['0'\]"),
                               ("tally", lambda s: s["layers"]["0"].pop("tally"), "only layers"),
                               ("threshold", lambda s: s["layers"].pop("1"), "layers must hold"),
                               ("done", lambda s: s["key"].update(images=9), "images: checkpoint has 9")):
        state = torch.load(io.BytesIO(blobs[stage]), weights_only=True)
        edit(state)
        state["digest"] = content_digest({k: v for k, v in state.items() if k != "digest"})
        torch.save(state, tmp_path / "dissect.pt")
        with pytest.raises(CheckpointError, match=match):
            _dissect(root, tmp_path)
