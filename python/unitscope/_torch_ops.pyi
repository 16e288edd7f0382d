# Type stub for unitscope._torch_ops (csrc/torch/): importing it registers the C++ CPU kernels of
# torch.ops.unitscope.* (python/unitscope/kernels/_ops.py imports it beside the torch it was built for).

torch_version: str  # torch.__version__ of the torch it was compiled and linked against
