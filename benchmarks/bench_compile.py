"""What torch.compile buys the methods that run the model many times, on the real EfficientNet-Lite0
on this CPU, side by side in one process: integrated gradients (images/s) and feature visualization
(render steps/s), eager vs compiled, the compile's own time apart, and how far the results differ.
The dissection's figures are in bench_dissect.py.

    python benchmarks/bench_compile.py            # IG: 4 photos x 32 steps; featviz: 128 px, 48 steps
    python benchmarks/bench_compile.py --quick    # IG: 1 photo x 8 steps; featviz: 64 px, 8 steps
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

# a fresh inductor cache: every compile timed here is a cold one (set before torch loads)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_compile_inductor_"))

import torch

from unitscope import featviz, models, saliency

HERE = Path(__file__).resolve().parent
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def time_ig(lm, x, steps, compile):
    """(seconds of the timed call, compile+first call seconds or 0, maps) for IG with `compile`."""
    ig = saliency.IntegratedGradients(lm.model, steps=steps, batch_size=16, preprocess=lm.preprocess,
                                      compile=compile)
    first = 0.0
    if compile:
        t = time.perf_counter()
        ig(x[:1], target=0)  # the compile, on the same shapes as the timed call's batches
        first = time.perf_counter() - t
    t = time.perf_counter()
    maps = ig(x, target=[1, 2, 3, 4][:x.shape[0]])
    return time.perf_counter() - t, first, maps


def time_render(lm, size, steps, compile):
    obj = featviz.channel("_blocks.10", 8)
    if compile:
        t = time.perf_counter()
        featviz.render(lm.model, obj, size=size, steps=2, preprocess=lm.preprocess, progress=False, compile=True)
        first = time.perf_counter() - t
    else:
        first = 0.0
    t = time.perf_counter()
    r = featviz.render(lm.model, obj, size=size, steps=steps, preprocess=lm.preprocess, progress=False,
                       compile=compile)
    return time.perf_counter() - t, first, r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--json", default=str(HERE / "out" / "bench_compile.json"), help="where the JSON goes")
    args = ap.parse_args()
    lm = models.load("efficientnet_lite0")
    n_photos, ig_steps = (1, 8) if args.quick else (4, 32)
    size, fv_steps = (64, 8) if args.quick else (128, 48)
    x = torch.cat([models.load_image(f"skimage:{p}", size=224) for p in PHOTOS[:n_photos]])
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "threads": torch.get_num_threads(), "torch": torch.__version__}

    t_e, _, m_e = time_ig(lm, x, ig_steps, False)
    t_c, first, m_c = time_ig(lm, x, ig_steps, True)
    out["integrated_gradients"] = {
        "photos": n_photos, "steps": ig_steps, "eager_images_per_s": n_photos / t_e,
        "compiled_images_per_s": n_photos / t_c, "speedup": t_e / t_c, "compile_and_first_call_s": first,
        "max_abs_diff": float((m_e - m_c).abs().max()), "max_abs": float(m_e.abs().max())}
    torch._dynamo.reset()

    t_e, _, r_e = time_render(lm, size, fv_steps, False)
    t_c, first, r_c = time_render(lm, size, fv_steps, True)
    out["featviz_render"] = {
        "size": size, "steps": fv_steps, "eager_steps_per_s": fv_steps / t_e, "compiled_steps_per_s": fv_steps / t_c,
        "speedup": t_e / t_c, "compile_and_first_call_s": first,
        "final_objective_eager": float(r_e.values.sum()), "final_objective_compiled": float(r_c.values.sum()),
        "max_abs_pixel_diff": float((r_e.images - r_c.images).abs().max())}

    ig, fv = out["integrated_gradients"], out["featviz_render"]
    print(f"integrated gradients ({ig['photos']} photos x {ig['steps']} steps): eager {ig['eager_images_per_s']:.2f} "
          f"img/s, compiled {ig['compiled_images_per_s']:.2f} img/s = {ig['speedup']:.2f}x "
          f"(compile + first call {ig['compile_and_first_call_s']:.0f} s); max |diff| {ig['max_abs_diff']:.1e} "
          f"of max |IG| {ig['max_abs']:.1e}")
    print(f"featviz render ({fv['size']} px, {fv['steps']} steps): eager {fv['eager_steps_per_s']:.2f} steps/s, "
          f"compiled {fv['compiled_steps_per_s']:.2f} steps/s = {fv['speedup']:.2f}x (compile + first steps "
          f"{fv['compile_and_first_call_s']:.0f} s); objective {fv['final_objective_eager']:.2f} vs "
          f"{fv['final_objective_compiled']:.2f}, max pixel diff {fv['max_abs_pixel_diff']:.2e}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
