"""unitscope: what has each unit of a convolutional network learned, and why did it predict this.

Network dissection, saliency maps and feature visualization on fast C++/CUDA kernels with Numba and
plain PyTorch fallbacks.
"""
from unitscope import data, featviz, kernels, models, saliency, viz
from unitscope._backend import backends, cuda_compiled

# the function shadows the subpackage's attribute on purpose: unitscope.dissect(model, ...) is the
# entry point; `from unitscope.dissect import ...` still reaches the subpackage
from unitscope.dissect import Dissection, LayerDissection, compare, dissect
from unitscope.explain import Explanation, explain
from unitscope.kernels import ExactQuantile, IoUTally, QuantileSketch

__version__ = "0.1.0"

__all__ = ["backends", "cuda_compiled", "data", "featviz", "kernels", "models", "saliency", "viz",
           "ExactQuantile", "IoUTally", "QuantileSketch", "Dissection", "LayerDissection", "compare", "dissect",
           "Explanation", "explain", "__version__"]
