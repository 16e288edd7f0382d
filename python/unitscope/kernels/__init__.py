"""The kernel API: validate inputs, pick a backend, call it. See shared DESIGN notes in the README."""
from unitscope.kernels.gradcam import gradcam

__all__ = ["gradcam"]
from unitscope.kernels.iou_tally import IoUTally  # noqa: E402
__all__ += ["IoUTally"]
