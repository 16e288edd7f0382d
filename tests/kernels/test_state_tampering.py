"""Tampered state dicts (issue 9.1): random edits of every field of every state dict (ExactQuantile,
QuantileSketch, IoUTally, the dissection's TopKImages) on every CPU backend must give either exactly
the untampered result or a clear ValueError/TypeError that changes nothing, never a crash, a
negative IoU or a silent change. Edits that also recompute the digest ("forged") reach the invariant
checks: those must be refused, or leave an object whose later updates stay memory-safe and sane."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitscope
from unitscope.dissect.topk import TopKImages
from unitscope.kernels import _state

BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba")] + ["torch"]
INT_VALUES = [-1, 0, 1, 2, 3, 7, 10 ** 4, 2 ** 31, 2 ** 32, 2 ** 62 + 1, 2 ** 63 - 1, -(2 ** 63)]
FLOAT_VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 1e30, -1e30, 0.5]


def data(seed, shape):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x[0, 0, 0, 0] = math.nan
    x.view(-1)[5] = math.inf
    return x


# ------------------------------------------------------------------ the objects under test
# each case: make() -> fresh object; feed(obj, part) -> obj; outcome(obj) -> what must not change
def exact_case(backend):
    N, K, hw = 6, 3, 4
    x = data(1, (N, K, hw, hw))
    return dict(make=lambda: unitscope.ExactQuantile(K, 0.9, N * hw * hw, backend=backend),
                parts=(x[:3], x[3:]), feed=lambda o, p: o.update(p), outcome=lambda o: o.result())


def sketch_case(backend):
    x = data(2, (5, 3, 4, 4))
    return dict(make=lambda: unitscope.QuantileSketch(3, size=5160, backend=backend),
                parts=(x[:3] * 50, x[3:] * 1e5), feed=lambda o, p: o.update(p),
                outcome=lambda o: torch.cat([o.quantile([0.0, 0.3, 0.99, 1.0]).flatten(), o.nan_count.float()]))


def tally_case(backend):
    g = torch.Generator().manual_seed(3)
    K, C, NC, S = 3, 6, 2, 8
    cat = torch.tensor([0, 0, 0, 1, 1, 1])
    A = torch.randn(4, K, 3, 3, generator=g)
    A[1, 1, 0, 0] = math.nan
    thr = torch.tensor([0.2, -0.5, 0.0])
    labels = torch.randint(0, C, (4, 2, S, S), generator=g).to(torch.int16)
    return dict(make=lambda: unitscope.IoUTally(K, C, label_category=cat, num_categories=NC, out_size=S,
                                                backend=backend),
                parts=((A[:2], labels[:2]), (A[2:], labels[2:])),
                feed=lambda o, p: o.update(p[0], thr, p[1]),
                outcome=lambda o: torch.cat([o.iou().flatten(), o.activation.flatten().double(),
                                             o.label.double(), torch.tensor([float(o.images)], dtype=torch.float64)]))


def topk_case(backend):
    x = data(4, (5, 3, 4, 4))
    x[2, 1] = math.nan
    return dict(make=lambda: TopKImages(3, 3, (4, 4)), parts=((x[:3], torch.arange(3)), (x[3:], torch.arange(3, 5))),
                feed=lambda o, p: (o.update(*p), o)[1],
                outcome=lambda o: torch.cat([o.values.flatten(), o.index.flatten().float(), o.maps.flatten(),
                                             o.minimum, o.maximum]))


CASES = {"ExactQuantile": exact_case, "QuantileSketch": sketch_case, "IoUTally": tally_case, "TopKImages": topk_case}
PARAMS = [(k, b) for k in CASES for b in (BACKENDS if k != "TopKImages" else ["torch"])]


def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(torch.isnan(a), torch.isnan(b)) and \
        torch.equal(torch.nan_to_num(a, 0.0, 1.0, -1.0), torch.nan_to_num(b, 0.0, 1.0, -1.0))


def snapshot(obj):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in obj.state_dict().items()
            if k != _state.DIGEST}


def same_state(a, b):
    return a.keys() == b.keys() and all(
        same(a[k].double(), b[k].double()) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


# ------------------------------------------------------------------ tampering
def tamper_value(draw, v):
    """A changed copy of v: another value, dtype, shape, type, or the same (a no-op is allowed too)."""
    if isinstance(v, torch.Tensor):
        how = draw(st.sampled_from(["element", "element", "element", "dtype", "shape", "scalar", "type"]))
        t = v.clone()
        if how == "element" and t.numel():
            i = draw(st.integers(0, t.numel() - 1))
            if t.dtype.is_floating_point:
                t.view(-1)[i] = draw(st.sampled_from(FLOAT_VALUES + [float(t.view(-1)[i]) * 2 + 1]))
            else:
                new = draw(st.sampled_from(INT_VALUES + [int(t.view(-1)[i]) + 1, int(t.view(-1)[i]) - 1]))
                if t.dtype == torch.bool:
                    t.view(-1)[i] = bool(new)
                else:  # a value the tensor's own dtype can hold (a uint8 tensor cannot take -1)
                    info = torch.iinfo(t.dtype)
                    t.view(-1)[i] = max(min(new, info.max), info.min)
            return t
        if how == "dtype":
            return t.to(draw(st.sampled_from([torch.float64, torch.float16, torch.int32, torch.int64, torch.uint8,
                                              torch.bool, torch.float32])))
        if how == "shape":
            choice = draw(st.sampled_from(["flat", "extra", "short", "long"]))
            if choice == "flat":
                return t.reshape(-1)
            if choice == "extra":
                return t[None]
            if choice == "short" and t.dim() and t.shape[-1]:
                return t[..., :-1]
            return torch.cat([t, t[..., :1]], dim=-1) if t.dim() else t[None]
        if how == "scalar":
            return torch.tensor(draw(st.sampled_from(INT_VALUES[:4] + FLOAT_VALUES[:3])))
        return draw(st.sampled_from([None, t.tolist(), "x", 3, t.numpy()]))
    if isinstance(v, dict):
        key = draw(st.sampled_from(sorted(v)))
        out = dict(v)
        out[key] = tamper_value(draw, v[key])
        return out
    if isinstance(v, list):
        return draw(st.sampled_from([v[:-1], v + v[-1:], [x + 1 if isinstance(x, int) else x for x in v], tuple(v),
                                     None]))
    if isinstance(v, bool):
        return draw(st.sampled_from([not v, int(v), None]))
    if isinstance(v, int):
        return draw(st.sampled_from([v + 1, v - 1, float(v), str(v), -v, None, torch.tensor(v)]))
    if isinstance(v, float):
        as_int = int(v) if math.isfinite(v) else 0
        return draw(st.sampled_from([math.nextafter(v, 2.0), v / 2, math.nan, str(v), as_int, None]))
    if isinstance(v, str):
        return draw(st.sampled_from([v + "x", v.upper(), "", None, 1]))
    return None


@st.composite
def tamperings(draw, state):
    """(tampered copy of state, forged): one to three edits; forged recomputes the digest after them."""
    out = dict(state)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        op = draw(st.sampled_from(["change"] * 6 + ["drop", "add"]))
        if op == "add":
            out[draw(st.sampled_from(["extra", "Digest", "fill2", 7]))] = torch.zeros(3)
            continue
        key = draw(st.sampled_from(sorted(out, key=repr)))
        if op == "drop":
            del out[key]
        else:
            out[key] = tamper_value(draw, out[key])
    forged = draw(st.booleans()) and isinstance(out.get(_state.DIGEST), str)
    if forged:
        out[_state.DIGEST] = _state.digest(out)
    return out, forged


@pytest.mark.parametrize("kind,backend", PARAMS)
@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tampered_state_gives_the_untampered_result_or_a_clear_error(kind, backend, data):
    case = CASES[kind](backend)
    first, second = case["parts"]
    saved = case["feed"](case["make"](), first).state_dict()
    want = case["outcome"](_restored(case, saved, second))
    state, forged = data.draw(tamperings(saved))
    obj = case["make"]()
    before = snapshot(obj)
    try:
        obj.load_state_dict(state)
    except (ValueError, TypeError) as e:
        assert str(e), "the error must say what is wrong"
        assert same_state(snapshot(obj), before), "a refused state must change nothing"
        return
    case["feed"](obj, second)  # must never crash, whatever was accepted
    try:
        got = case["outcome"](obj)
    except ValueError as e:  # e.g. ExactQuantile: a forged count no longer adds up to total
        assert forged, f"an unforged edit was accepted and then failed: {e}"
        return
    if not forged:
        assert same(got, want), "an edit slipped through the digest and changed the result"
    if kind == "IoUTally":
        iou = obj.iou()
        assert bool((iou >= 0).all()) and not bool(torch.isnan(iou).any()), "IoU must be in [0, inf), never NaN"


def _restored(case, saved, second):
    obj = case["make"]()
    obj.load_state_dict(saved)
    return case["feed"](obj, second)


@pytest.mark.parametrize("kind,backend", PARAMS)
def test_untampered_round_trip_and_every_key_is_required(kind, backend):
    case = CASES[kind](backend)
    first, second = case["parts"]
    straight = case["outcome"](case["feed"](case["feed"](case["make"](), first), second))
    saved = case["feed"](case["make"](), first).state_dict()
    assert same(case["outcome"](_restored(case, saved, second)), straight)
    for key in saved:
        partial = {k: v for k, v in saved.items() if k != key}
        with pytest.raises(ValueError, match=f"missing key.*{key}"):
            case["make"]().load_state_dict(partial)
    with pytest.raises(ValueError, match="unknown key"):
        case["make"]().load_state_dict({**saved, "extra": 1})
    with pytest.raises(TypeError, match="expects a dict"):
        case["make"]().load_state_dict([saved])


# ------------------------------------------------------------------ the issue's cases, and the kernels' own checks
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_fill_past_the_buffer_is_refused(backend):
    e = unitscope.ExactQuantile(3, 0.995, 10 ** 6, backend=backend)
    sd = e.state_dict()
    sd["fill"] = torch.full((3,), 20000)
    with pytest.raises(ValueError, match=r"state\['fill'\]\[0\] must be min\(count - nan_count, m\) = 0, got 20000"):
        e.load_state_dict(sd)
    e.update(torch.randn(2, 3, 10, 10))
    assert e.count.tolist() == [200] * 3


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_compiled_kernels_never_trust_the_fill_or_top_they_are_given(backend):
    # bypass load_state_dict: the kernels themselves must refuse before writing anything
    e = unitscope.ExactQuantile(3, 0.995, 10 ** 6, backend=backend)
    for bad in (e.cap, 10 ** 6, -1):
        e._fill[1] = bad
        with pytest.raises(ValueError, match=r"fill\[1\] = " + str(bad)):
            e.update(torch.randn(2, 3, 10, 10))
        assert int(e._fill[0]) == 0 and e.count.tolist() == [0] * 3
    s = unitscope.QuantileSketch(2, backend=backend)
    for bad in (511, 10 ** 9, -2):
        s._s["top"][0] = bad
        with pytest.raises(ValueError, match=r"top\[0\] = " + str(bad)):
            s.update(torch.randn(4, 2))
        assert int(s.nan_count.sum() + s.count.sum()) == 0


@pytest.mark.skipif("cpp" not in unitscope.backends(), reason="needs the compiled module")
@pytest.mark.parametrize("L,Sh,Sw", [(1, 46341, 46341), (2, 32768, 32768), (2 ** 31, 1, 1), (3, 2 ** 29, 4)])
def test_cpp_tally_refuses_label_cells_past_int32(L, Sh, Sw):
    # the interval tables of csrc/cpu/tally.cpp index one image's L * S_h * S_w cells with int32: the
    # entry point refuses larger sizes before reading a buffer (so small buffers are safe to pass here)
    from unitscope import _backend

    C = _backend.compiled_module()
    buf = torch.zeros(64, dtype=torch.int64)
    p = buf.data_ptr()
    with pytest.raises(ValueError, match=rf"L \* S_h \* S_w < 2\^31.*L = {L}, S_h = {Sh}, S_w = {Sw}"):
        C.tally_cpu(p, p, p, 0, 0, p, p, p, p, p, 0, 0, 0, 1, 1, 1, 1, Sh, Sw, L, 0, 2, 1, False, False, False, 1)
    # just under the bound is accepted by the check (B = 0: nothing is read)
    C.tally_cpu(p, p, p, 0, 0, p, p, p, p, p, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 2, 1, False, False, False, 1)


def _forged(case, edit):
    sd = case["feed"](case["make"](), case["parts"][0]).state_dict()
    sd = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}
    edit(sd)
    if all(v.device.type == "cpu" for v in sd.values() if isinstance(v, torch.Tensor)):
        sd[_state.DIGEST] = _state.digest(sd)  # consistent digest: only the invariant checks can refuse it
    return sd


def _set(key, index, value):
    return lambda s: s[key].__setitem__(index, value)


FORGED = [
    ("ExactQuantile", _set("fill", 1, 11), r"'fill'\]\[1\] must be min\(count - nan_count, m\) = 12, got 11"),
    ("ExactQuantile", _set("count", 0, -5), r"'count'\]\[0\] must be in \[0, 4611686018427387904\], got -5"),
    ("ExactQuantile", _set("nan_count", 2, 49), r"'count - nan_count'\]\[2\] must be in \[0"),
    ("ExactQuantile", _set("count", 0, 5), r"'fill'\]\[0\] must be min\(count - nan_count, m\) = 4, got 12"),
    ("ExactQuantile", _set("candidates", (0, 3), math.nan), r"'candidates'\]\[0, 3\] is NaN"),
    ("ExactQuantile", _set("candidates", (1, 4), 1e9), r"'candidates'\]\[1, 4\] is out of order"),
    ("ExactQuantile", lambda s: s.__setitem__("q", 0.5), "saved with q=0.5"),
    ("ExactQuantile", lambda s: s.__setitem__("total", 96.0), "saved with total=96.0"),
    ("ExactQuantile", lambda s: s.__setitem__("fill", s["fill"].int()), "'fill'\\] must be int64, got int32"),
    ("ExactQuantile", lambda s: s.__setitem__("candidates", s["candidates"].to("meta")), "must be on the cpu"),
    ("QuantileSketch", _set("coarse", (0, 5), -1), r"'coarse'\]\[0, 5\] must be in \[0"),
    ("QuantileSketch", _set("top", 1, 511), r"'top'\]\[1\] must be in \[-1, 510\]"),
    ("QuantileSketch", _set("top", 1, 300), r"'coarse'\]\[1, \d+\] counts bucket \d+, which lies in or above"),
    ("QuantileSketch", _set("fine", 1, 0), r"'fine'\]\[1\] must count values in the top bucket 390"),
    ("QuantileSketch", _set("top", 1, 400), r"'kmax'\]\[1\] must be the key of the largest value counted \(bucket 400"),
    ("QuantileSketch", _set("coarse", (2, 400), 1), r"'coarse'\]\[2, 400\] counts bucket 400"),
    ("QuantileSketch", _set("kmin", 0, 0), r"'kmin'\]\[0\] must be the key of the smallest value"),
    ("QuantileSketch", _set("kmax", 0, 2 ** 40), r"'kmax'\]\[0\] must be the key of the largest value"),
    ("QuantileSketch", lambda s: (s["zeros"].fill_(2 ** 62), s["nan"].fill_(2 ** 62)),
     r"coarse \+ fine \+ zeros \+ nan \(per channel\)'\]\[0\]"),
    ("IoUTally", _set("intersection", (0, 0), 1), r"'intersection'\]\[0, 0\] must be in \[0, 0\]"),
    ("IoUTally", _set("label", 0, 1), r"'label'\]\[0\] must be in \[0, 0\]"),
    ("IoUTally", _set("intersection", (1, 2), 10 ** 6), r"'label'|'intersection'\]\[1, 2\] = 1000000 must be <= label"),
    ("IoUTally", _set("activation_total", 0, -1), r"'activation_total'\]\[0\] must be in \[0"),
    ("IoUTally", _set("activation_total", 0, 129), r"'activation_total'\]\[0\] must be in \[0, 128\]"),
    ("IoUTally", _set("activation", (2, 1), 129), r"'activation'\]\[2, 1\] = 129 must be <= activation_total"),
    ("IoUTally", lambda s: s.__setitem__("images", torch.tensor(-1)), r"'images'\] must be in \[0"),
    ("IoUTally", lambda s: s.__setitem__("images", 2), "'images'\\] must be a dense torch.Tensor"),
    ("IoUTally", lambda s: s["config"].__setitem__("out_size", (8, 8)), "out_size is \\(8, 8\\)"),
]


@pytest.mark.parametrize("kind,edit,match", FORGED)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forged_states_are_refused_naming_the_field(kind, edit, match, backend):
    case = CASES[kind](backend)
    obj = case["make"]()
    before = snapshot(obj)
    with pytest.raises((ValueError, TypeError), match=match):
        obj.load_state_dict(_forged(case, edit))
    assert same_state(snapshot(obj), before)
