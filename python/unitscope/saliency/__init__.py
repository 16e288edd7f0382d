"""unitscope.saliency: pixel attribution for image classifiers, one method per file.

`method = Method(model, ...)`, then `method(x, target=...)` -> attribution Tensor on x's device.
"""
from unitscope.saliency.ablationcam import AblationCAM
from unitscope.saliency.base import Attribution, show_progress
from unitscope.saliency.baselines import make_baseline
from unitscope.saliency.deep_shap import DeepSHAP
from unitscope.saliency.deeplift import DeepLift
from unitscope.saliency.deletion_insertion import deletion_insertion
from unitscope.saliency.eigencam import EigenCAM
from unitscope.saliency.fullgrad import FullGrad
from unitscope.saliency.gradcam import GradCAM
from unitscope.saliency.gradcam_plus_plus import GradCAMPlusPlus
from unitscope.saliency.gradient import VanillaGradient
from unitscope.saliency.gradient_shap import GradientSHAP
from unitscope.saliency.gradient_x_input import GradientTimesInput
from unitscope.saliency.guided_backprop import GuidedBackprop
from unitscope.saliency.guided_gradcam import GuidedGradCAM
from unitscope.saliency.hirescam import HiResCAM
from unitscope.saliency.hooks import LayerCapture, resolve_layer
from unitscope.saliency.integrated_gradients import IntegratedGradients
from unitscope.saliency.kernel_shap import KernelSHAP
from unitscope.saliency.layer_integrated_gradients import LayerIntegratedGradients
from unitscope.saliency.layercam import LayerCAM
from unitscope.saliency.lime import LIME
from unitscope.saliency.lrp import LRP, LayerLRP
from unitscope.saliency.neuron import LayerGradientXActivation, NeuronModel
from unitscope.saliency.occlusion import Occlusion
from unitscope.saliency.randomization import randomization_test, spearman
from unitscope.saliency.scorecam import ScoreCAM
from unitscope.saliency.smoothgrad import SmoothGrad
from unitscope.saliency.xgradcam import XGradCAM

__all__ = ["Attribution", "VanillaGradient", "GradientTimesInput", "SmoothGrad", "IntegratedGradients",
           "GuidedBackprop", "GradCAM", "GradCAMPlusPlus", "HiResCAM", "ScoreCAM", "GuidedGradCAM", "XGradCAM",
           "LayerCAM", "EigenCAM", "AblationCAM", "FullGrad", "LRP", "LayerLRP", "DeepLift", "DeepSHAP",
           "GradientSHAP", "NeuronModel", "LayerGradientXActivation", "LayerIntegratedGradients", "Occlusion",
           "LIME", "KernelSHAP", "LayerCapture", "resolve_layer", "make_baseline", "randomization_test",
           "spearman", "deletion_insertion", "show_progress"]
