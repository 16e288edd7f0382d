"""Network dissection (Bau et al., CVPR 2017): which concept, if any, each unit of a layer detects.
`dissect()` runs the two passes; `Dissection` holds and exports the results; `compare()` puts
several side by side."""
from unitscope.dissect.capture import LayerCapture
from unitscope.dissect.result import Dissection, LayerDissection
from unitscope.dissect.report import Comparison, compare, save_report
from unitscope.dissect.run import dissect, imagenet_preprocess

__all__ = ["Comparison", "compare", "save_report", "Dissection", "LayerCapture", "LayerDissection", "dissect", "imagenet_preprocess"]
