"""`unitscope info`: which backends this installation has and why the others are missing."""
import platform

import torch

from unitscope import _backend


def add_arguments(parser):
    pass


def run(args) -> int:
    print(f"unitscope {__import__('unitscope').__version__} on Python {platform.python_version()}, torch {torch.__version__}")
    print(f"compiled with CUDA: {_backend.cuda_compiled()}")
    for name, status in _backend.backends(verbose=True).items():
        print(f"  {name:6s} {status}")
    from unitscope.kernels import _ops

    why = _ops.COMPILED_KERNELS_MISSING
    print("torch.ops.unitscope CPU kernels: " + ("C++ (unitscope._torch_ops)" if not why else f"Python ({why})"))
    return 0
