"""Saliency methods on the real EfficientNet-Lite0 at 224x224: time per image and peak memory at batch
1 and 16, unitscope beside its peer's equivalent in the same process (Captum; zennit for LRP;
pytorch-grad-cam for XGrad-CAM, LayerCAM, Eigen-CAM, Ablation-CAM and FullGrad), and Grad-CAM for the
top-5 classes of 16 images in one call vs five calls. Prints a table, writes
benchmarks/out/bench_saliency.json.

zennit and pytorch-grad-cam are imported as the tests do, with the torchvision stand-in of
tests/saliency/peers.py (and zennit with the EfficientNet canonizer written there). The pytorch-grad-cam
rows explain "_bn1" (the head's BatchNorm, 1280 x 7 x 7), not the default "_swish@1": pytorch-grad-cam
cannot pick one call of the reused `_swish` module. Ablation-CAM runs at batch 1 only (1280 forward
passes per image).

Memory: on CPU the peak of the bytes torch allocates during one call (torch.profiler's memory events,
cumulated in time order, minus what was live before the call; tensors only, not Python objects); on
CUDA torch.cuda.max_memory_allocated over the call. Times are measured in separate runs without the
profiler: the median of --reps runs after one warm-up run.

    python benchmarks/bench_saliency.py [--quick] [--device cpu|cuda] [--methods gradcam,ig,...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from unitscope import models
from unitscope import saliency as S


def settings(quick):
    if quick:
        return dict(batches=(1, 4), ig_steps=8, sg_samples=4, occ=(56, 56), lime_samples=32, score_channels=32,
                    reps=1)
    return dict(batches=(1, 16), ig_steps=32, sg_samples=16, occ=(32, 16), lime_samples=256, score_channels=256,
                reps=3)


def ours(name, lm, cfg, bs):
    kw = dict(preprocess=lm.preprocess)
    m, layer = lm.model, lm.cam_layer
    return {
        "gradient": lambda: S.VanillaGradient(m, reduce="abs", channel=None, **kw),
        "gradient_x_input": lambda: S.GradientTimesInput(m, channel=None, **kw),
        "smoothgrad": lambda: S.SmoothGrad(S.VanillaGradient(m, reduce="abs", channel=None, **kw),
                                           n_samples=cfg["sg_samples"], noise=0.15, batch_size=16),
        "integrated_gradients": lambda: S.IntegratedGradients(m, steps=cfg["ig_steps"], method="gauss_legendre",
                                                              batch_size=32, **kw),
        "guided_backprop": lambda: S.GuidedBackprop(m, **kw),
        "gradcam": lambda: S.GradCAM(m, layer, normalize=False, **kw),  # raw, as Captum returns it
        "gradcam++": lambda: S.GradCAMPlusPlus(m, layer, **kw),
        "hirescam": lambda: S.HiResCAM(m, layer, **kw),
        "scorecam": lambda: S.ScoreCAM(m, layer, max_channels=cfg["score_channels"], batch_size=32, **kw),
        "guided_gradcam": lambda: S.GuidedGradCAM(m, layer, **kw),
        "occlusion": lambda: S.Occlusion(m, cfg["occ"][0], cfg["occ"][1], baseline="gray", batch_size=32, **kw),
        "lime": lambda: S.LIME(m, segments="grid", n_segments=49, n_samples=cfg["lime_samples"], batch_size=32, **kw),
        "kernelshap": lambda: S.KernelSHAP(m, segments="grid", n_segments=49, n_samples=cfg["lime_samples"],
                                           batch_size=32, **kw),
        "lrp": lambda: S.LRP(m, "epsilon_gamma_box", **kw),
        "xgradcam": lambda: S.XGradCAM(m, GRADCAM_PEER_LAYER, **kw),
        "layercam": lambda: S.LayerCAM(m, GRADCAM_PEER_LAYER, **kw),
        "eigencam": lambda: S.EigenCAM(m, GRADCAM_PEER_LAYER, sign="svd", **kw),
        "ablationcam": lambda: S.AblationCAM(m, GRADCAM_PEER_LAYER, batch_size=32, **kw),
        "fullgrad": lambda: S.FullGrad(m, **kw),
        "deeplift": lambda: S.DeepLift(m, baseline="black", **kw),
        "gradientshap": lambda: S.GradientSHAP(m, baselines="black", n_samples=cfg["sg_samples"], batch_size=16, **kw),
    }[name]()


GRADCAM_PEER_LAYER = "_bn1"
GRADCAM_PEER = {"xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM", "ablationcam": "AblationCAM",
                "fullgrad": "FullGrad"}
BATCH1_ONLY = {"ablationcam"}


def _peers():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "saliency"))
    import peers

    return peers


def peer_call(name, lm, cfg, x, target):
    """(peer name, its equivalent as a zero-argument callable), or (None, None) where there is none."""
    if name == "lrp":
        peers = _peers()
        peers.zennit()
        import copy

        import zennit.composites as zc
        from zennit.attribution import Gradient

        model = copy.deepcopy(lm.model).eval()
        xin = lm.preprocess(x)
        lo, hi = lm.preprocess(torch.zeros_like(x[:1])), lm.preprocess(torch.ones_like(x[:1]))
        comp = zc.EpsilonGammaBox(low=torch.minimum(lo, hi), high=torch.maximum(lo, hi),
                                  canonizers=peers.zennit_efficientnet_canonizers(model))
        onehot = torch.zeros(x.shape[0], 1000, device=x.device).scatter(1, target[:, None], 1.0)

        def run():
            with Gradient(model=model, composite=comp) as attributor:
                return attributor(xin, lambda out: out * onehot)[1]
        return "zennit", run
    if name in GRADCAM_PEER:
        _peers().install_torchvision_standin()
        import pytorch_grad_cam as gc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layers = [] if name == "fullgrad" else [lm.model.get_submodule(GRADCAM_PEER_LAYER)]
        kw = {"batch_size": 32} if name == "ablationcam" else {}
        xin = lm.preprocess(x)
        targets = [ClassifierOutputTarget(int(t)) for t in target]

        def run():
            cam = getattr(gc, GRADCAM_PEER[name])(model=lm.model, target_layers=layers, **kw)
            try:
                return torch.from_numpy(cam(input_tensor=xin, targets=targets))
            finally:
                cam.activations_and_grads.release()
        return "grad-cam", run
    cap = captum_call(name, lm, cfg, x, target)
    return ("captum", cap) if cap is not None else (None, None)


def captum_call(name, lm, cfg, x, target):
    """Captum's equivalent as a zero-argument callable, or None where Captum has none."""
    import captum.attr as C

    net = nn.Sequential(lm.preprocess, lm.model).eval()
    layer = lm.model.get_submodule(lm.cam_layer.split("@")[0])  # Captum hooks the last call: the head
    H, W = x.shape[-2:]
    if name == "gradient":
        return lambda: C.Saliency(net).attribute(x, target=target, abs=True)
    if name == "gradient_x_input":
        return lambda: C.InputXGradient(net).attribute(x, target=target)
    if name == "smoothgrad":
        sd = 0.15 * float(x.max() - x.min())
        return lambda: C.NoiseTunnel(C.Saliency(net)).attribute(x, target=target, nt_type="smoothgrad",
                                                                nt_samples=cfg["sg_samples"], nt_samples_batch_size=16,
                                                                stdevs=sd, abs=True)
    if name == "integrated_gradients":
        return lambda: C.IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                            n_steps=cfg["ig_steps"], method="gausslegendre",
                                                            internal_batch_size=32)
    if name == "guided_backprop":
        return lambda: C.GuidedBackprop(net).attribute(x, target=target)
    if name == "deeplift":  # Captum hooks modules once each: EfficientNet's reused _swish gives another map
        return lambda: C.DeepLift(net).attribute(x, baselines=torch.zeros_like(x), target=target)
    if name == "gradientshap":
        return lambda: C.GradientShap(net).attribute(x, baselines=torch.zeros_like(x[:1]), target=target,
                                                     n_samples=cfg["sg_samples"])
    if name == "gradcam":
        return lambda: C.LayerAttribution.interpolate(
            C.LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True), (H, W),
            interpolate_mode="bilinear")
    if name == "guided_gradcam":
        return lambda: C.GuidedGradCam(net, layer).attribute(x, target=target, interpolate_mode="bilinear")
    if name == "occlusion":
        w, s = cfg["occ"]
        return lambda: C.Occlusion(net).attribute(x, sliding_window_shapes=(3, w, w), strides=(3, s, s),
                                                  baselines=0.5, target=target, perturbations_per_eval=32)
    if name in ("lime", "kernelshap"):
        from unitscope.saliency.superpixels import grid_segments

        mask = grid_segments(H, W, 49).to(x.device)[None, None].expand(x.shape[0], 1, H, W)
        if name == "lime":
            return lambda: C.Lime(net).attribute(x, target=target, feature_mask=mask, baselines=0.5,
                                                 n_samples=cfg["lime_samples"], perturbations_per_eval=32)
        return lambda: C.KernelShap(net).attribute(x, target=target, feature_mask=mask, baselines=0.5,
                                                   n_samples=cfg["lime_samples"], perturbations_per_eval=32)
    return None


def peak_memory(fn, device):
    """Peak bytes allocated by torch during fn() beyond what was live before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    evs = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in evs:
        live += n
        peak = max(peak, live)
    return peak


def timed(fn, device, reps, keep=False):
    """Median seconds of reps calls after a warm-up call (and the warm-up's result when keep)."""
    result = fn()  # warm-up
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return (statistics.median(out), result) if keep else statistics.median(out)


def images(n, device):
    """n different 224x224 photos: crops and flips of scikit-image's sample photos."""
    from skimage import data

    photos = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    out = []
    for i in range(n):
        x = models.load_image(photos[i % 4], 224)
        out.append(x.flip(-1) if (i // 4) % 2 else x)
    return torch.cat(out).to(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small settings, batch 1 and 4, one repetition")
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default="all")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes, overriding the settings")
    p.add_argument("--reps", type=int, default=None, help="repetitions per timing, overriding the settings")
    p.add_argument("--no-captum", "--no-peers", dest="no_captum", action="store_true",
                   help="time unitscope only (no Captum, zennit or pytorch-grad-cam rows)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                                 "bench_saliency.json"))
    args = p.parse_args(argv)
    cfg = settings(args.quick)
    if args.batches:
        cfg["batches"] = tuple(int(b) for b in args.batches.split(","))
    if args.reps:
        cfg["reps"] = args.reps
    device = torch.device(args.device)
    lm = models.load("efficientnet_lite0", device=device)
    names = ["gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop", "gradcam",
             "gradcam++", "hirescam", "scorecam", "guided_gradcam", "occlusion", "lime", "kernelshap", "lrp",
             "xgradcam", "layercam", "eigencam", "ablationcam", "fullgrad", "deeplift", "gradientshap"]
    if args.methods != "all":
        names = [n for n in args.methods.split(",") if n]
    have_captum = not args.no_captum
    if have_captum:
        try:
            import captum  # noqa: F401
        except ImportError:
            have_captum = False
    X = images(max(cfg["batches"]), device)
    with torch.no_grad():
        top5 = lm.model(lm.preprocess(X)).topk(5, dim=1).indices
    rows = []
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, settings {cfg}")
    print(f"{'method':22s} {'B':>3s} {'ours ms/img':>12s} {'peer ms/img':>14s} {'ratio':>6s} "
          f"{'ours MiB':>9s} {'peer MiB':>11s} {'max|diff|':>10s} peer")
    for name in names:
        for bs in cfg["batches"]:
            if name in BATCH1_ONLY and bs != 1:
                continue
            x, tgt = X[:bs], top5[:bs, 0]
            method = ours(name, lm, cfg, bs)
            row = {"method": name, "batch": bs}
            t, mine = timed(lambda: method(x, tgt), device, cfg["reps"], keep=True)  # noqa: B023 (called here)
            row["ours_s_per_image"] = t / bs
            row["ours_peak_bytes"] = peak_memory(lambda: method(x, tgt), device)  # noqa: B023 (called here)
            peer, cap = (None, None)
            if have_captum:
                try:
                    peer, cap = peer_call(name, lm, cfg, x, tgt)
                except Exception as e:  # a peer that does not import here: the row keeps ours only
                    row["peer_error"] = f"{type(e).__name__}: {e}"
                    print(f"  peer of {name}: {row['peer_error']}")
            if cap is not None:
                row["peer"] = peer
                try:
                    t, theirs = timed(cap, device, cfg["reps"], keep=True)
                    row["peer_s_per_image"] = t / bs
                    row["peer_peak_bytes"] = peak_memory(cap, device)
                    row["ratio_peer_over_ours"] = row["peer_s_per_image"] / row["ours_s_per_image"]
                    row["max_abs_diff"] = agreement(name, mine, theirs)
                except (ImportError, ValueError) as e:  # e.g. Captum's Lime/KernelShap need scikit-learn
                    row["peer_error"] = f"{type(e).__name__}: {e}"
                    print(f"  {peer} {name}: {row['peer_error']}")
            rows.append(row)
            print(f"{name:22s} {bs:3d} {1e3 * row['ours_s_per_image']:12.1f} "
                  f"{_f(row.get('peer_s_per_image'), 1e3, 14, 1)} {_f(row.get('ratio_peer_over_ours'), 1, 6, 2)} "
                  f"{row['ours_peak_bytes'] / 2**20:9.1f} {_f(row.get('peer_peak_bytes'), 2**-20, 11, 1)} "
                  f"{_f(row.get('max_abs_diff'), 1, 10, 2, 'e')} {row.get('peer', '-')}")
            sys.stdout.flush()
    multi = gradcam_top5(lm, X, top5, device, cfg)
    print(f"Grad-CAM top-5 of {X.shape[0]} images: one call {multi['one_call_s']:.3f} s, five calls "
          f"{multi['five_calls_s']:.3f} s (x{multi['five_calls_s'] / multi['one_call_s']:.2f})"
          + (f", captum five calls {multi['captum_five_calls_s']:.3f} s" if "captum_five_calls_s" in multi else ""))
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.platform(), "settings": cfg, "memory": "CPU: torch.profiler memory events, peak "
              "beyond live at call start; CUDA: torch.cuda.max_memory_allocated", "rows": rows,
              "gradcam_top5": multi}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


def agreement(name, a, b):
    """Largest difference between our map and the peer's, after bringing them to one form."""
    if name in ("smoothgrad", "lime", "kernelshap", "gradientshap"):
        return float("nan")  # random samples differ: not comparable value by value
    b = b.detach()
    if name in ("gradcam", "occlusion"):
        b = b[:, 0]  # Captum keeps a channel axis (repeated over the window's channels for occlusion)
    if a.shape != b.shape:
        return float("nan")
    return float((a.float() - b.float()).abs().max())


def gradcam_top5(lm, X, top5, device, cfg):
    cam = S.GradCAM(lm.model, lm.cam_layer, preprocess=lm.preprocess)
    out = {"images": X.shape[0],
           "one_call_s": timed(lambda: cam(X, top5), device, cfg["reps"]),
           "five_calls_s": timed(lambda: [cam(X, top5[:, t]) for t in range(5)], device, cfg["reps"])}
    a = cam(X, top5)
    b = torch.stack([cam(X, top5[:, t]) for t in range(5)], dim=1)
    out["max_abs_diff"] = float((a - b).abs().max())
    try:
        import captum.attr as C

        net = nn.Sequential(lm.preprocess, lm.model).eval()
        lgc = C.LayerGradCam(net, lm.model.get_submodule(lm.cam_layer.split("@")[0]))
        out["captum_five_calls_s"] = timed(lambda: [C.LayerAttribution.interpolate(
            lgc.attribute(X, target=top5[:, t], relu_attributions=True), (224, 224), interpolate_mode="bilinear")
            for t in range(5)], device, cfg["reps"])
    except ImportError:
        pass
    return out


def _f(v, scale, width, prec, kind="f"):
    return f"{'-':>{width}s}" if v is None else f"{v * scale:{width}.{prec}{kind}}"


if __name__ == "__main__":
    main()
