"""unitscope: what has each unit of a convolutional network learned, and why did it predict this.

Network dissection, saliency maps and feature visualization on fast C++/CUDA kernels with Numba and
plain PyTorch fallbacks.
"""
from unitscope._backend import backends, cuda_compiled
from unitscope import featviz, kernels, models, saliency, viz
from unitscope.kernels import ExactQuantile, IoUTally, QuantileSketch

__version__ = "0.1.0"

__all__ = ["backends", "cuda_compiled", "featviz", "kernels", "models", "saliency", "viz", "ExactQuantile",
           "IoUTally", "QuantileSketch", "__version__"]
