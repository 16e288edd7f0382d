"""The kernel API: validate inputs, pick a backend, call it. See shared DESIGN notes in the README."""
from unitscope.kernels.exact_quantile import ExactQuantile
from unitscope.kernels.gradcam import gradcam
from unitscope.kernels.quantile_sketch import QuantileSketch

__all__ = ["ExactQuantile", "QuantileSketch", "gradcam"]
