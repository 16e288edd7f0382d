"""Every CUDA entry point once, on small odd-sized inputs, checked against the cpp backend: the
program run.sh runs under compute-sanitizer (memcheck, racecheck). Exits 0 when every result agrees,
1 when one differs, 2 without the cuda backend.

    compute-sanitizer --tool memcheck python benchmarks/gpu/sanitize_subset.py
"""
from __future__ import annotations

import math
import sys

import torch

import unitscope
from unitscope.kernels import gradcam


def main() -> int:
    if "cuda" not in unitscope.backends():
        print(f"sanitize_subset: the cuda backend is {unitscope.backends(verbose=True)['cuda']}", file=sys.stderr)
        return 2
    dev = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator().manual_seed(0)
    A = torch.relu(torch.randn(3, 5, 7, 5, generator=g))
    A[0, 1, 2, 3] = math.nan
    A[1, 2, 0, 0] = math.inf
    pix = torch.randint(0, 11, (3, 2, 13, 9), generator=g).to(torch.int16)
    img = torch.randint(0, 11, (3, 2), generator=g)
    failures = []

    def check(name, got, want):
        same = torch.equal(got.cpu(), want) if not got.is_floating_point() else torch.allclose(
            got.cpu(), want, rtol=2e-5, atol=2e-5, equal_nan=True)
        print(f"{name}: {'ok' if same else 'DIFFERS'}")
        if not same:
            failures.append(name)

    for be, d in (("cpp", torch.device("cpu")), ("cuda", dev)):
        gb = torch.Generator().manual_seed(1)  # the same random draws for both backends
        t = unitscope.IoUTally(5, 11, label_category=torch.arange(11) % 3, num_categories=3, out_size=(13, 9),
                               device=d, backend=be)
        t.update(A.to(d), torch.full((5,), 0.3, device=d), pix.to(d), img.to(d))
        e = unitscope.ExactQuantile(5, 0.9, 3 * 35 * 300, device=d, backend=be)
        for _ in range(300):  # enough values per channel to fill and compact the candidate buffers
            e.update((A * torch.rand(A.shape, generator=gb)).to(d))
        s = unitscope.QuantileSketch(5, device=d, backend=be)
        for scale in (1.0, 1e3, 1e-3):
            s.update((A * scale).to(d))
        cam = gradcam(A.nan_to_num().to(d), (A.nan_to_num() - 0.5).to(d), out_size=(11, 17), normalize=True,
                      backend=be)
        cam_w = gradcam(A.nan_to_num().to(d), weights=torch.randn(3, 2, 5, generator=gb).to(d), out_size=4,
                        backend=be)
        result = {"tally": t.intersection, "exact": e.result(), "sketch": s._s["fine"], "cam": cam, "cam_w": cam_w}
        if be == "cpp":
            want = {k: v.clone() for k, v in result.items()}
        else:
            for k, v in result.items():
                check(k, v, want[k])
    torch.cuda.synchronize(dev)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
