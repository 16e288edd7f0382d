"""Plain PyTorch references: each function here *defines* the result of the kernel of the same name."""
from unitscope.reference.bilinear import bilinear_resize, bilinear_taps
from unitscope.reference.gradcam import gradcam

__all__ = ["bilinear_resize", "bilinear_taps", "gradcam"]
from unitscope.reference.tally import tally_counts  # noqa: E402
__all__ += ["tally_counts"]
