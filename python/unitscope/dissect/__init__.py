"""Network dissection (Bau et al., CVPR 2017): which concept, if any, each unit of a layer detects.
`dissect()` runs the two passes; `Dissection` holds and exports the results; `compare()` puts
several side by side.

Choices where the reference tools differ (docs/design.md, "Network dissection: where
the reference tools differ"), made deliberately:
- threshold: the `quantile` (0.995) of each unit's raw, not upsampled, activations over the whole
  dataset (NetDissect, NetDissect-Lite), exact by default (ExactQuantile);
- upsampling: bilinear to the label resolution with F.interpolate's rules, align_corners=False
  (NetDissect-Lite resizes bilinearly with PIL; 'bilinear-align-corners' is davidbau/dissect's grid);
- mask: `upsampled > threshold` (NetDissect-Lite); '>=' on request;
- ties: raw activations equal to the threshold follow the mask rule (ties='op'); ties='random'
  (unitscope's own) draws a seeded share of them so the mask holds the quantile's mass in expectation;
- union: 'category', the original paper's (a unit's mask pixels count toward concept c only in images
  annotated for c's category); 'dataset' counts them in every image (davidbau/dissect, compexp);
  'mask' only in images where a label of c's category lies inside the mask (NetDissect-Lite);
  whole-image labels (scene, texture) cover every pixel of their image;
- a label's category is the selected category where its coverage (c_<category>.csv) is largest;
- a dead unit (constant activation) is never a detector, whatever the mask rule.
"""
from unitscope.dissect.capture import LayerCapture
from unitscope.dissect.checkpoint import CheckpointError
from unitscope.dissect.report import Comparison, compare, save_report
from unitscope.dissect.result import Dissection, LayerDissection
from unitscope.dissect.rotation import random_rotation
from unitscope.dissect.run import dissect, imagenet_preprocess

__all__ = ["CheckpointError", "Comparison", "compare", "save_report", "Dissection", "LayerCapture",
           "LayerDissection", "dissect", "imagenet_preprocess", "random_rotation"]
