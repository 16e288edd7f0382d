"""unitscope: what has each unit of a convolutional network learned, and why did it predict this.

Network dissection, saliency maps and feature visualization on fast C++/CUDA kernels with Numba and
plain PyTorch fallbacks.
"""
from unitscope._backend import backends, cuda_compiled
from unitscope import kernels

__version__ = "0.1.0"

__all__ = ["backends", "cuda_compiled", "kernels", "__version__"]

from unitscope import models  # noqa: E402  (pretrained model registry)

__all__ += ["models"]

from unitscope import saliency, viz  # noqa: E402  (attribution methods, overlays)

__all__ += ["saliency", "viz"]
