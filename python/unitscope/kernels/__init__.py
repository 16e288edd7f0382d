"""The kernel API: validate inputs, pick a backend, call it (DESIGN: Backends)."""
from unitscope.kernels.exact_quantile import ExactQuantile
from unitscope.kernels.gradcam import gradcam
from unitscope.kernels.iou_tally import IoUTally
from unitscope.kernels.quantile_sketch import QuantileSketch

__all__ = ["ExactQuantile", "IoUTally", "QuantileSketch", "gradcam"]
