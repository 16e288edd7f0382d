"""Layer and neuron attribution (Captum's layer/neuron variants). NeuronModel turns one unit of a
hidden layer into the model's only output, so that any method explains that unit from the pixels
("which pixels made unit k fire"); LayerGradientXActivation attributes a class to a layer's units."""
from __future__ import annotations

from torch import nn

from unitscope.saliency.cam_base import CAMBase
from unitscope.saliency.hooks import LayerCapture


class NeuronModel(nn.Module):
    """model -> the activation of one unit of `layer`, as an output (B, 1) (target 0).

    Args:
        model: the network (its train/eval mode is copied).
        layer (str or nn.Module): as for the CAM methods ("name@k" for a reused module).
        unit (int or (k, i, j)): channel k, averaged over the layer's locations (the unit of
            network dissection), or the single activation at channel k, location (i, j) (Captum's
            neuron_selector tuple).

    `IntegratedGradients(NeuronModel(model, "layer4", 12), baseline="black")(x, 0)` is Captum's
    NeuronIntegratedGradients; likewise VanillaGradient (NeuronGradient), GuidedBackprop, SmoothGrad,
    DeepLift and LRP (the relevance of the unit's activation: the whole forward runs, so modules after
    the layer still need LRP rules). Output "logits" (the default) explains the activation itself.
    """

    def __init__(self, model, layer, unit):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(unit, bool) or not (isinstance(unit, int) or (
                isinstance(unit, tuple) and len(unit) == 3 and all(isinstance(u, int) for u in unit))):
            raise TypeError(f"unit must be a channel int k or a tuple (k, i, j), got {unit!r}")
        self.model = model
        self.layer = LayerCapture(model, layer).spec  # a bad layer fails here
        self.unit = unit
        self.train(model.training)

    def forward(self, x):
        with LayerCapture(self.model, self.layer) as cap:
            self.model(x)
        A = cap.check()
        k = self.unit if isinstance(self.unit, int) else self.unit[0]
        if not 0 <= k < A.shape[1]:
            raise ValueError(f"unit channel must lie in [0, {A.shape[1]}) for layer {self.layer!r}, got {k}")
        if isinstance(self.unit, int):
            return A[:, k].mean(dim=(1, 2))[:, None]
        _, i, j = self.unit
        if not (0 <= i < A.shape[2] and 0 <= j < A.shape[3]):
            raise ValueError(f"unit location must lie in [0, {A.shape[2]}) x [0, {A.shape[3]}), got ({i}, {j})")
        return A[:, k, i, j][:, None]


class LayerGradientXActivation(CAMBase):
    """Each unit's activation times the gradient of the class score with respect to it (Captum's
    LayerGradientXActivation): (B, K, h, w), or (B, T, K, h, w) for (B, T) targets; no reduction,
    no upsampling. `.sum(dim=(-2, -1))` gives a per-unit contribution to join with dissection labels."""

    def __init__(self, model, layer, *, output=None, preprocess=None):
        super().__init__(model, layer, output=output, preprocess=preprocess, normalize=False)

    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x)
        return self.layer_gradients(A, s, targets) * A.detach()[:, None]
