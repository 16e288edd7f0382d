"""The kernel API: validate inputs, pick a backend, call it (docs/design.md, "Backend contract"). Each
kernel is a registered operator, torch.ops.unitscope.* (kernels/_ops.py, docs/embedding.md); the
functions and classes here check arguments and call those.

NaN policy (docs/design.md, "NaN policy"; every backend and the reference in unitscope.reference follow
it; tests/kernels/test_nan_policy.py):

- Quantiles (ExactQuantile, QuantileSketch): NaN values are ignored and counted (``nan_count``);
  +-inf are values like any other. A channel with no other value gives NaN.
- IoU tally: a NaN in a map makes the resized values that read it NaN (IEEE arithmetic, with the
  four taps' weights even when a weight is 0), and a NaN never passes a threshold, so it is outside
  every mask. Thresholds must not be NaN (ValueError).
- Grad-CAM: the weighted sum is IEEE arithmetic over every channel, zero weights included
  (0 * NaN = 0 * inf = NaN), so a NaN or inf in a channel reaches every pixel it touches; ReLU and
  the resize keep NaN; ``normalize`` takes the min and max of the non-NaN pixels, maps each other
  pixel to (v - min) / (max - min), or to 0 when that range is 0 or not finite, and leaves NaN pixels NaN.
- Top-k images of a dissection (dissect/topk.py): NaN positions are ignored: an image's score and a
  unit's min/max are over the non-NaN values, and a map with none is never kept.

Results agree bit for bit across backends wherever they do without NaN (quantiles, tally counts,
the resize); Grad-CAM's NaN pixels are the same on every backend.
"""
from unitscope.kernels import _ops  # noqa: F401  (registers torch.ops.unitscope.*)
from unitscope.kernels.exact_quantile import ExactQuantile
from unitscope.kernels.gradcam import gradcam
from unitscope.kernels.iou_tally import IoUTally
from unitscope.kernels.mask_iou import MaskIoU, mask_iou
from unitscope.kernels.quantile_sketch import QuantileSketch

__all__ = ["ExactQuantile", "IoUTally", "MaskIoU", "QuantileSketch", "gradcam", "mask_iou"]
