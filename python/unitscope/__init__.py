"""unitscope: what has each unit of a convolutional network learned, and why did it predict this.

Network dissection, saliency maps and feature visualization on fast C++/CUDA kernels with Numba and
plain PyTorch fallbacks. Only the kernels load with the package; the applications (dissect, explain,
featviz, saliency, data, models, viz) load on first use (PEP 562), so `import unitscope.kernels`
stays lean for embedding (docs/embedding.md).
"""
import importlib
import sys as _sys
import types

from unitscope._backend import backends, cuda_compiled
from unitscope._version import __version__
from unitscope.kernels import ExactQuantile, IoUTally, QuantileSketch

_SUBPACKAGES = ("data", "featviz", "kernels", "models", "saliency", "viz", "dissect", "explain")
# name -> subpackage it comes from; dissect and explain are the functions, which shadow their
# subpackages on purpose (unitscope.dissect(model, ...)); `from unitscope.dissect import ...` still
# reaches the subpackage through sys.modules
_LAZY = {"Dissection": "dissect", "LayerDissection": "dissect", "compare": "dissect", "dissect": "dissect",
         "Explanation": "explain", "explain": "explain", "layers": "models"}
_FUNCTIONS = ("dissect", "explain")

__all__ = [
    "Dissection",
    "ExactQuantile",
    "Explanation",
    "IoUTally",
    "LayerDissection",
    "QuantileSketch",
    "__version__",
    "backends",
    "compare",
    "cuda_compiled",
    "data",
    "dissect",
    "explain",
    "featviz",
    "kernels",
    "layers",
    "models",
    "saliency",
    "viz",
]


class _Package(types.ModuleType):
    """When the import system binds the subpackage unitscope.dissect (or .explain) as an attribute of
    the package, the function of the same name is bound instead, whichever import comes first."""

    def __setattr__(self, name, value):
        if name in _FUNCTIONS and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"unitscope.{_LAZY[name]}")
        value = getattr(module, name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"unitscope.{name}")
    else:
        raise AttributeError(f"module 'unitscope' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


_sys.modules[__name__].__class__ = _Package
