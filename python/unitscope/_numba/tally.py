"""The IoU tally in Numba, the same two phases as csrc/cpu/tally.cpp: per-image label lists without
repeats (parallel over images), then per-unit pruned walks of the output (parallel over units, each
task owning its rows of the counters). The pruning bound is tally.h's value_bound.
"""
import numpy as np
from numba import njit, prange

from unitscope._numba.bilinear import bilinear_combine, bilinear_taps

F32 = np.float32


@njit(cache=True, inline="always")
def value_bound(m, maxabs):
    """Upper bound (float64) on a resized value whose source cells have max m, max magnitude maxabs."""
    if not (m < F32(3.0e38)) or not (maxabs < F32(3.0e38)):
        return np.inf
    return np.float64(m) + np.float64(maxabs) * 9.5367431640625e-07 + 7.52316384526264e-37


@njit(cache=True, inline="always")
def may_pass(bound, thr, ge):
    return bound >= np.float64(thr) if ge else bound > np.float64(thr)


@njit(parallel=True, cache=True)
def prepare_labels(pix, img, label_category, num_labels, num_categories):
    """pix int32 (B, L, Sh, Sw), img int32 (B, L2) -> kept (B, P, L) int32 (distinct non-image labels
    of a pixel first, then 0), img_kept (B, L2) int32, present (B, NC) bool, counts (B, C) int64,
    bad (B,) int64 (0, or 1 + index of an out-of-range label's image... flagged per image)."""
    B, L, Sh, Sw = pix.shape
    L2 = img.shape[1]
    P = Sh * Sw
    kept = np.zeros((B, P, L), np.int32)
    img_kept = np.zeros((B, L2), np.int32)
    present = np.zeros((B, num_categories), np.bool_)
    counts = np.zeros((B, num_labels), np.int64)
    bad = np.zeros(B, np.bool_)
    for b in prange(B):
        is_img = np.zeros(num_labels, np.bool_)
        n_img = 0
        for j in range(L2):
            c = img[b, j]
            if c < 0 or c >= num_labels:
                bad[b] = True
                break
            if c == 0 or is_img[c]:
                continue
            is_img[c] = True
            img_kept[b, n_img] = c
            n_img += 1
            present[b, label_category[c]] = True
            counts[b, c] += P
        if bad[b]:
            continue
        for y in range(Sh):
            for x in range(Sw):
                p = y * Sw + x
                n = 0
                for l in range(L):
                    c = pix[b, l, y, x]
                    if c < 0 or c >= num_labels:
                        bad[b] = True
                        break
                    if c == 0 or is_img[c]:
                        continue
                    seen = False
                    for i in range(n):
                        if kept[b, p, i] == c:
                            seen = True
                    if seen:
                        continue
                    kept[b, p, n] = c
                    n += 1
                    counts[b, c] += 1
                    present[b, label_category[c]] = True
    return kept, img_kept, present, counts, bad


@njit(parallel=True, cache=True)
def count_units(act, thr, kept, img_kept, present, annotated, use_annotated, Sh, Sw, align_corners, ge,
                union_dataset, inter, activation, total):
    """act float32 (B, K, h, w), thr float32 (K,) equivalents; adds into inter (K, C),
    activation (K, NC), total (K,) int64."""
    B, K, h, w = act.shape
    L = kept.shape[2]
    L2 = img_kept.shape[1]
    NC = activation.shape[1]
    yi0, yi1, yl0, yl1 = bilinear_taps(h, Sh, align_corners)
    xi0, xi1, xl0, xl1 = bilinear_taps(w, Sw, align_corners)
    xlo = np.full(w, Sw, np.int64)
    xhi = np.full(w, -1, np.int64)
    for x in range(Sw):
        for j in (xi0[x], xi1[x]):
            xlo[j] = min(xlo[j], x)
            xhi[j] = max(xhi[j], x)
    for k in prange(K):
        t = thr[k]
        rowmax = np.empty(h, np.float32)
        tot = 0
        for b in range(B):
            a = act[b, k]
            m = -np.inf
            maxabs = F32(0.0)
            for i in range(h):
                rm = F32(-np.inf)
                for j in range(w):
                    v = a[i, j]
                    if v > rm:
                        rm = v
                    av = abs(v)
                    if av > maxabs:
                        maxabs = av
                rowmax[i] = rm
                if rm > m:
                    m = rm
            if not may_pass(value_bound(F32(m), maxabs), t, ge):
                continue
            n = 0
            for y in range(Sh):
                i0 = yi0[y]
                i1 = yi1[y]
                if not may_pass(value_bound(max(rowmax[i0], rowmax[i1]), maxabs), t, ge):
                    continue
                cursor = 0
                for j in range(w):
                    cm = max(a[i0, j], a[i1, j])
                    if xhi[j] < cursor or not may_pass(value_bound(cm, maxabs), t, ge):
                        continue
                    for x in range(max(xlo[j], cursor), xhi[j] + 1):
                        v = bilinear_combine(yl0[y], yl1[y], xl0[x], xl1[x], a[i0, xi0[x]], a[i0, xi1[x]],
                                             a[i1, xi0[x]], a[i1, xi1[x]])
                        if (v >= t) if ge else (v > t):
                            n += 1
                            p = y * Sw + x
                            for l in range(L):
                                c = kept[b, p, l]
                                if c == 0:
                                    break
                                inter[k, c] += 1
                    cursor = xhi[j] + 1
            if n == 0:
                continue
            tot += n
            for j in range(L2):
                c = img_kept[b, j]
                if c == 0:
                    break
                inter[k, c] += n
            for c in range(NC):
                if union_dataset or (annotated[b, c] if use_annotated else present[b, c]):
                    activation[k, c] += n
        total[k] += tot


def tally_numba(act, thr32, pix, img, annotated, use_annotated, label_category, Sh, Sw, align_corners, ge,
                union_dataset, inter, activation, label, total):
    """Add one checked batch's counts into the int64 arrays inter, activation, label, total.

    act float32 (B, K, h, w); thr32 float32 (K,); pix int32 (B, L, Sh, Sw); img int32 (B, L2);
    annotated bool (B, NC); label_category int64 (C,). Out-of-range labels raise ValueError before
    any count changes."""
    C = inter.shape[1]
    kept, img_kept, present, counts, bad = prepare_labels(pix, img, label_category, C, activation.shape[1])
    if bad.any():
        raise ValueError(f"pixel_labels/image_labels must hold labels in [0, num_labels) = [0, {C})")
    label[1:] += counts.sum(axis=0)[1:]
    count_units(np.ascontiguousarray(act), thr32, kept, img_kept, present, annotated, use_annotated, Sh, Sw,
                align_corners, ge, union_dataset, inter, activation, total)
