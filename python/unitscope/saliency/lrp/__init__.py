"""unitscope.saliency.lrp: layer-wise relevance propagation with Deep Taylor rules.

`LRP(model, composite="epsilon_plus_flat")(x, target)`; rules in rules.py, composites in composites.py.
"""
from unitscope.saliency.lrp.composites import (
                                               COMPOSITES,
                                               Composite,
                                               DeepTaylor,
                                               EpsilonAlpha2Beta1,
                                               EpsilonAlpha2Beta1Flat,
                                               EpsilonGammaBox,
                                               EpsilonPlus,
                                               EpsilonPlusFlat,
)
from unitscope.saliency.lrp.layer_lrp import LayerLRP
from unitscope.saliency.lrp.lrp import LRP
from unitscope.saliency.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, WSquare, ZBox, ZPlus

__all__ = ["LRP", "LayerLRP", "Rule", "Epsilon", "ZPlus", "AlphaBeta", "ZBox", "Gamma", "Flat", "WSquare", "Composite",
           "EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat", "EpsilonGammaBox",
           "DeepTaylor", "COMPOSITES"]
