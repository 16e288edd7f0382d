"""Plain PyTorch references: each function here *defines* the result of the kernel of the same name."""
from unitscope.reference.bilinear import bilinear_resize, bilinear_taps
from unitscope.reference.gradcam import gradcam
from unitscope.reference.quantile import exact_quantile
from unitscope.reference.tally import tally_counts

__all__ = ["bilinear_resize", "bilinear_taps", "exact_quantile", "gradcam", "tally_counts"]
