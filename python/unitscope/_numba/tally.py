"""The IoU tally in Numba, in two phases like csrc/cpu/tally.cpp: label counts, range checks and
categories per image (parallel over images), then per-unit walks of only the output rows that can
pass (parallel over units, each task owning its rows of the counters), reading each passing pixel's
labels in place. The pruning bound is tally.h's value_bound.
"""
import numpy as np
from numba import njit, prange

from unitscope._numba.bilinear import bilinear_taps

F32 = np.float32


@njit(cache=True, inline="always")
def value_bound(m, maxabs):
    """Upper bound (float64) on a resized value whose source cells have max m, max magnitude maxabs."""
    if not (m < F32(3.0e38)) or not (maxabs < F32(3.0e38)):
        return np.inf
    return np.float64(m) + np.float64(maxabs) * 9.5367431640625e-07 + 7.52316384526264e-37


@njit(cache=True, inline="always")
def lerp(l0, l1, a, b):
    """One linear step of bilinear_combine: l0*a + l1*b rounded to float32 per operation (tally.h lerp_rn)."""
    return F32(F32(l0 * a) + F32(l1 * b))


@njit(cache=True, inline="always")
def may_pass(bound, thr, ge):
    return bound >= np.float64(thr) if ge else bound > np.float64(thr)


@njit(parallel=True, cache=True)
def prepare_labels(pix, img, label_category, num_labels, num_categories):
    """pix int (B, L, Sh, Sw), img int (B, L2) -> img_kept (B, L2) int64 (distinct nonzero image
    labels first, then 0), present (B, NC) bool, counts (B, C) int64 (each label once per pixel),
    bad (B,) int8 (0, or 1 / 2 when image_labels / pixel_labels hold an out-of-range label, which
    bad_value (B,) int64 gives)."""
    B, L, Sh, Sw = pix.shape
    L2 = img.shape[1]
    P = Sh * Sw
    img_kept = np.zeros((B, L2), np.int64)
    present = np.zeros((B, num_categories), np.bool_)
    counts = np.zeros((B, num_labels), np.int64)
    bad = np.zeros(B, np.int8)
    bad_value = np.zeros(B, np.int64)
    for b in prange(B):
        n_img = 0
        for j in range(L2):
            c = np.int64(img[b, j])
            if c < 0 or c >= num_labels:
                bad[b] = 1
                bad_value[b] = c
                break
            dup = c == 0
            for i in range(n_img):
                dup |= img_kept[b, i] == c
            if dup:
                continue
            img_kept[b, n_img] = c
            n_img += 1
            present[b, label_category[c]] = True
            counts[b, c] += P
        if bad[b] != 0:
            continue
        for y in range(Sh):
            for x in range(Sw):
                for l in range(L):
                    c = np.int64(pix[b, l, y, x])
                    if c == 0:
                        continue
                    if c < 0 or c >= num_labels:
                        bad[b] = 2
                        bad_value[b] = c
                        break
                    dup = False
                    for i in range(n_img):
                        dup |= img_kept[b, i] == c
                    for q in range(l):
                        dup |= np.int64(pix[b, q, y, x]) == c
                    if dup:
                        continue
                    counts[b, c] += 1
                    present[b, label_category[c]] = True
    return img_kept, present, counts, bad, bad_value


@njit(parallel=True, cache=True)
def count_units(act, thr, pix, img_kept, present, annotated, use_annotated, label_category, Sh, Sw, align_corners,
                ge, union_mode, inter, activation, total):
    """act float32 (B, K, h, w), thr float32 (K,) equivalents, pix int (B, L, Sh, Sw); adds into
    inter (K, C), activation (K, NC), total (K,) int64. union_mode: 0 category, 1 dataset, 2 mask
    (the categories of the labels inside the mask and of the image labels, NetDissect-Lite's)."""
    B, K, h, w = act.shape
    L = pix.shape[1]
    L2 = img_kept.shape[1]
    NC = activation.shape[1]
    yi0, yi1, yl0, yl1 = bilinear_taps(h, Sh, align_corners)
    xi0, xi1, xl0, xl1 = bilinear_taps(w, Sw, align_corners)
    for k in prange(K):
        t = thr[k]
        rowmax = np.empty(h, np.float32)
        # two source rows interpolated to width Sw (output rows read source rows in non-decreasing
        # order); H_row[s] is the row slot s holds, -1 none (h x Sw floats would be 40 GB for a
        # 100000 x 1 map resized to 1 x 100000)
        H = np.empty((2, Sw), np.float32)
        H_row = np.full(2, -1, np.int64)
        in_mask = np.zeros(NC, np.bool_)  # union_mode 2: categories with a label inside this pair's mask
        tot = 0
        for b in range(B):
            a = act[b, k]
            m = F32(-np.inf)
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
            if not may_pass(value_bound(m, maxabs), t, ge):
                continue
            H_row[:] = -1
            in_mask[:] = False
            n = 0
            for y in range(Sh):
                i0 = yi0[y]
                i1 = yi1[y]
                if not may_pass(value_bound(max(rowmax[i0], rowmax[i1]), maxabs), t, ge):
                    continue
                for i, keep in ((i0, i1), (i1, i0)):  # horizontal interpolation of source row i
                    if H_row[0] == i or H_row[1] == i:
                        continue
                    s = 1 if H_row[0] == keep else 0
                    H_row[s] = i
                    for x in range(Sw):
                        H[s, x] = lerp(xl0[x], xl1[x], a[i, xi0[x]], a[i, xi1[x]])
                s0 = 0 if H_row[0] == i0 else 1
                s1 = 0 if H_row[0] == i1 else 1
                for x in range(Sw):
                    v = lerp(yl0[y], yl1[y], H[s0, x], H[s1, x])  # = bilinear_combine, see tally.h
                    if not ((v >= t) if ge else (v > t)):
                        continue
                    n += 1
                    for l in range(L):  # each distinct label once; image labels are added below
                        c = np.int64(pix[b, l, y, x])
                        dup = c == 0
                        for i in range(L2):
                            dup |= img_kept[b, i] == c
                        for q in range(l):
                            dup |= np.int64(pix[b, q, y, x]) == c
                        if not dup:
                            inter[k, c] += 1
                            in_mask[label_category[c]] = True
            if n == 0:
                continue
            tot += n
            for j in range(L2):
                c = img_kept[b, j]
                if c == 0:
                    break
                inter[k, c] += n
                in_mask[label_category[c]] = True
            for c in range(NC):
                if union_mode == 1:
                    counted = True
                elif union_mode == 2:
                    counted = in_mask[c]
                else:
                    counted = annotated[b, c] if use_annotated else present[b, c]
                if counted:
                    activation[k, c] += n
        total[k] += tot


def tally_numba(act, thr32, pix, img, annotated, use_annotated, label_category, Sh, Sw, align_corners, ge,
                union_mode, inter, activation, label, total):
    """Add one batch's counts into the int64 arrays inter (K, C), activation (K, NC), label (C,),
    total (K,).

    act float32 (B, K, h, w); thr32 float32 (K,); pix int (B, L, Sh, Sw) and img int (B, L2) of
    any integer dtype; annotated bool (B, NC); label_category int64 (C,); union_mode 0 category,
    1 dataset, 2 mask (see count_units). An out-of-range label
    raises ValueError before any count changes."""
    C = inter.shape[1]
    img_kept, present, counts, bad, bad_value = prepare_labels(pix, img, label_category, C, activation.shape[1])
    if bad.any():
        b = int(np.argmax(bad != 0))
        name = "image_labels" if bad[b] == 1 else "pixel_labels"
        raise ValueError(f"{name} must hold labels in [0, num_labels) = [0, {C}), got {int(bad_value[b])} "
                         f"(image {b} of the batch)")
    label[1:] += counts.sum(axis=0)[1:]
    count_units(np.ascontiguousarray(act), thr32, pix, img_kept, present, annotated, use_annotated, label_category,
                Sh, Sw, align_corners, ge, union_mode, inter, activation, total)
