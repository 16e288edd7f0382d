"""Issue 19 part 2: sizes and thread counts that used to abort the process (std::bad_alloc inside an
OpenMP region, libgomp exiting on num_threads=2**31-1) or corrupt Numba's state. Each case that
could kill the interpreter runs in a subprocess, so a regression fails one test, not pytest."""
import os
import resource
import subprocess
import sys
import textwrap

import pytest
import torch

import unitscope
from conftest import CPU_BACKENDS
from unitscope import _backend
from unitscope.kernels import gradcam

# where the unitscope this process imports lives (installed, or the source tree's python/ folder)
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(unitscope.__file__)))


def _limit_memory():  # 16 GiB of address space: a regression fails to allocate instead of swapping
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def run_isolated(code: str, timeout=300) -> str:
    """Run code in a fresh interpreter with 2 threads and a bounded address space; return its stdout,
    failing with its stderr when it did not exit 0."""
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limit_memory)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcam_of_a_tall_map_resized_wide(backend):
    # (100000 x 1) -> (1 x 100000): each thread used to ask for h x W = 10^10 floats of scratch
    out = run_isolated(f"""
        import torch
        from unitscope.kernels import gradcam
        torch.manual_seed(0)
        A = torch.rand(2, 3, 100000, 2) - 0.3
        G = torch.rand(2, 3, 100000, 2)
        for w, size in ((1, (1, 100000)), (2, (2, 100000))):  # w = 1: constant along x, so no normalize
            for normalize in (False, True) if w > 1 else (False,):
                a, g = A[..., :w].contiguous(), G[..., :w].contiguous()
                got = gradcam(a, g, out_size=size, backend={backend!r}, normalize=normalize, num_threads=2)
                want = gradcam(a, g, out_size=size, backend="torch", normalize=normalize)
                assert got.shape == (2,) + size, got.shape
                assert got.abs().max() > 0
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # the next call works too (Numba used to raise SystemError after a failed allocation)
        small = gradcam(A[:, :, :5], G[:, :, :5], out_size=(3, 4), backend={backend!r})
        torch.testing.assert_close(small, gradcam(A[:, :, :5], G[:, :, :5], out_size=(3, 4), backend="torch"))
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tally_of_a_tall_map_resized_wide(backend):
    # the same shape through the IoU tally: each thread used to ask for h x S_w floats
    out = run_isolated(f"""
        import torch, unitscope
        torch.manual_seed(0)
        A = torch.randn(2, 3, 100000, 1)
        thr = torch.tensor([0.0, 0.5, -0.5])
        pix = torch.randint(0, 4, (2, 1, 1, 100000), dtype=torch.int16)
        counts = []
        for b in ({backend!r}, "torch"):
            t = unitscope.IoUTally(3, 4, label_category=torch.tensor([0, 0, 0, 1]), num_categories=2,
                                   out_size=(1, 100000), backend=b)
            t.update(A, thr, pix)
            counts.append([t.intersection, t.activation, t.label, t.activation_total])
        for got, want in zip(*counts):
            assert torch.equal(got, want), (got, want)
        assert counts[0][3].sum() > 0 and counts[0][0].sum() > 0
        print("ok")
    """)
    assert out.strip() == "ok"


def test_the_row_cache_gives_the_same_bits_on_every_shape(backend):
    # the two-row (tally) and used-rows (Grad-CAM) scratch against the reference on shapes where
    # output rows reuse, skip and repeat source rows
    torch.manual_seed(1)
    for (h, w), (H, W) in [((7, 5), (16, 11)), ((16, 11), (7, 5)), ((9, 1), (1, 9)), ((1, 6), (5, 1))]:
        for align in (False, True):
            A = torch.randn(2, 4, h, w)
            thr = torch.tensor([0.0, 0.3, -0.2, 1.0])
            pix = torch.randint(0, 5, (2, 2, H, W), dtype=torch.int32)
            got = []
            for b in (backend, "torch"):
                t = unitscope.IoUTally(4, 5, label_category=torch.tensor([0, 0, 1, 1, 2]), num_categories=3,
                                       out_size=(H, W), align_corners=align, backend=b)
                t.update(A, thr, pix)
                got.append((t.intersection, t.activation, t.label, t.activation_total))
            for x, y in zip(*got):
                assert torch.equal(x, y)
            if backend != "cuda":
                G = torch.randn(2, 4, h, w)
                torch.testing.assert_close(gradcam(A, G, out_size=(H, W), align_corners=align, backend=backend),
                                           gradcam(A, G, out_size=(H, W), align_corners=align, backend="torch"))


BAD_THREADS = [(2**31 - 1, ValueError), (2**31, ValueError), (2**64, ValueError), (0, ValueError), (-1, ValueError),
               (1.5, TypeError), (True, TypeError), ("4", TypeError)]


def test_num_threads_is_bounded_before_any_kernel_runs():
    # every entry taking num_threads, on every CPU backend; 2**31-1 used to make libgomp exit the
    # process, 2**31 to raise a TypeError listing raw addresses
    out = run_isolated(f"""
        import torch, unitscope
        from unitscope.kernels import gradcam
        A = torch.rand(1, 2, 3, 3)
        entries = {{}}
        for b in {CPU_BACKENDS + ["torch"]!r}:
            entries["gradcam/" + b] = lambda n, b=b: gradcam(A, A, backend=b, num_threads=n)
            entries["IoUTally/" + b] = lambda n, b=b: unitscope.IoUTally(
                2, 3, label_category=torch.tensor([0, 0, 1]), num_categories=2, out_size=3, backend=b,
                num_threads=n).update(A, torch.zeros(2), torch.zeros(1, 1, 3, 3, dtype=torch.uint8))
        for name, call in entries.items():
            call(2)  # a sane count works
            for n, err in {[(repr(n), e.__name__) for n, e in BAD_THREADS]!r}:
                try:
                    call(eval(n))
                except Exception as e:
                    assert type(e).__name__ == err, (name, n, repr(e))
                    assert "num_threads" in str(e) and "0x" not in str(e), (name, n, str(e))
                else:
                    raise AssertionError(f"{{name}} accepted num_threads={{n}}")
        print("ok", len(entries))
    """)
    assert out.startswith("ok")


def test_num_threads_bound_is_documented_and_defaults_stay_inside():
    assert _backend.max_threads() == max(64, 4 * (os.cpu_count() or 1))
    assert _backend.num_threads(_backend.max_threads()) == _backend.max_threads()
    assert 1 <= _backend.num_threads() <= _backend.max_threads()


@pytest.mark.skipif("cpp" not in unitscope.backends(), reason="needs the compiled cpp backend")
def test_compiled_kernels_bound_num_threads_themselves():
    # the C++ refuses what the Python layer would have refused, should a caller reach it directly
    C = _backend.compiled_module()
    A = torch.rand(1, 2, 3, 3)
    out = torch.empty(1, 1, 3, 3)
    ptr = lambda t: t.data_ptr()  # noqa: E731
    with pytest.raises(ValueError, match="num_threads must be at most 4096, got 4097"):
        C.gradcam_cpu(ptr(A), ptr(A), 0, ptr(out), 0, 1, 1, 2, 3, 3, 3, 3, True, False, False, 4097)
    C.gradcam_cpu(ptr(A), ptr(A), 0, ptr(out), 0, 1, 1, 2, 3, 3, 3, 3, True, False, False, 4096)
    torch.testing.assert_close(out[:, 0], gradcam(A, A, backend="torch"))


@pytest.mark.skipif(not unitscope.cuda_compiled(), reason="needs a build with the CUDA kernels")
def test_gradcam_cuda_checks_sizes_before_touching_the_device():
    # checked like gradcam_cpu, before any CUDA call: runs on a machine without a GPU too
    C = _backend.compiled_module()
    for h, w, H, W, what in [(1 << 30, 1, 1, 1, r"map sizes must be below 2\^30"),
                             (7, 7, 1, 1 << 31, r"map sizes must be below 2\^30")]:
        with pytest.raises(ValueError, match=what):
            C.gradcam_cuda(1, 1, 0, 1, 1, 0, 1, 1, 4, h, w, H, W, True, False, False, 0, 0)
    with pytest.raises(ValueError, match=r"B \* T must be below 2\^31 maps"):
        C.gradcam_cuda(1, 0, 1, 1, 1, 0, 1 << 20, 1 << 12, 4, 7, 7, 8, 8, True, False, False, 0, 0)
