"""explain(): which dissected concepts made a prediction. Grad-CAM's channel weights times each unit's
mean activation split the Grad-CAM sum into per-unit contributions; the dissection names the units."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from unitscope.explain.concepts import NO_CONCEPT, close_concepts, unit_concepts
from unitscope.explain.explanation import ConceptContribution, Explanation, UnitContribution


def explain(model, x, dissection, layer, target=None, *, top=5, preprocess=None, class_names=None,
            featviz=None) -> list[Explanation]:
    """Explain the prediction for each image of x by the concepts of the units of `layer`.

    For the target class c of image b, Grad-CAM weighs unit k of `layer` by alpha_k = the spatial
    mean of dS_c/dA_k (Selvaraju et al., ICCV 2017); unit k contributes alpha_k * sum(A_k) (sum over the
    layer's h x w positions) to the sum of the Grad-CAM map before its ReLU, and the K contributions
    sum to it exactly. At the model's CAM layer (the last feature map, followed only by global average
    pooling and a linear classifier) that sum is the class logit minus the classifier's bias: S_c =
    sum_k W[c, k] mean(A_k) + b_c and alpha_k = W[c, k] / (h w). Units are ranked by contribution
    (largest first), named by the dissection (Bau et al., CVPR 2017: a unit is a detector of its best
    concept when its IoU is above the dissection's IoU threshold, else "no concept"), and summed per
    concept and per category.

    Args:
        model (nn.Module or models.LoadedModel): the classifier, in eval mode. A LoadedModel also
            gives the default preprocess and class names.
        x (Tensor[B, 3, H, W], float): the images, in the space `preprocess` takes ([0, 1] pixels for
            the registry's models).
        dissection (Dissection, LayerDissection or path of a dissection.json): the dissection of `layer`.
        layer (str): the dissected layer: a module name, or 'name@k' for the k-th call of a module
            that runs several times per forward (e.g. EfficientNet-Lite0's CAM layer '_swish@1'); read by
            unitscope.hooks.LayerCapture: the layer's output as it returned it.
        target: None (each image's top class), an int, or B ints.
        top (int): how many of the highest-contributing units carry maps and images (only units with a
            positive contribution are listed).
        preprocess (callable): applied to x inside the graph (default: the LoadedModel's, else none).
        class_names (list of str): names of the classes (default: the LoadedModel's, else "class N").
        featviz (mapping unit -> image, or callable unit -> image, optional): feature visualizations
            (H, W, 3) of the top units, e.g. lambda k: featviz.render(...).images[0].

    Returns a list of B Explanations (see Explanation), one per image.
    """
    from unitscope._checks import check_input, check_positive_int, warn_if_training
    from unitscope.models import LoadedModel
    from unitscope.reference.bilinear import bilinear_resize
    from unitscope.saliency import GradCAM
    from unitscope.viz import to_image_array

    if isinstance(model, LoadedModel):
        preprocess = model.preprocess if preprocess is None else preprocess
        class_names = model.class_names if class_names is None else class_names
        model = model.model
    check_positive_int(top, "top")
    if featviz is not None and not isinstance(featviz, Mapping) and not callable(featviz):
        raise TypeError(f"featviz must be a mapping unit -> image, a callable or None, got {type(featviz).__name__}")
    x = check_input(x)
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str), got {type(layer).__name__}")
    concepts = unit_concepts(dissection, layer)
    warn_if_training(model)
    cam = GradCAM(model, layer, relu=False, upsample=False, preprocess=preprocess)
    targets, _ = cam.resolve_targets(x, target)
    if targets.shape[1] != 1:
        raise ValueError(f"target must be None, an int or B ints (one class per image), got shape {tuple(targets.shape)}")
    A, scores = cam.activations_and_scores(x)
    if A.shape[1] != concepts.num_units:
        raise ValueError(f"layer {layer!r} has {A.shape[1]} units but the dissection has {concepts.num_units}")
    alpha = cam.weights(A, cam.layer_gradients(A, scores, targets))[:, 0]       # (B, K)
    A = A.detach()
    contrib = (alpha.double() * A.double().sum(dim=(2, 3))).cpu().numpy()       # (B, K) float64
    probs = torch.softmax(scores.detach().double(), dim=1).cpu()
    names = class_names if class_names is not None else [f"class {i}" for i in range(probs.shape[1])]
    if len(names) != probs.shape[1]:
        raise ValueError(f"class_names must have one name per class ({probs.shape[1]}), got {len(names)}")
    fv_cache: dict = {}

    def fv(k):
        if featviz is None:
            return None
        if k not in fv_cache:
            img = featviz.get(k) if isinstance(featviz, Mapping) else featviz(k)
            fv_cache[k] = None if img is None else to_image_array(img)
        return fv_cache[k]

    hw = tuple(x.shape[-2:])
    concept_of = [concepts.concept(k) for k in range(concepts.num_units)]
    out = []
    for b in range(x.shape[0]):
        c = contrib[b]
        positive = float(c[c > 0].sum())
        share = c / positive if positive > 0 else np.zeros_like(c)
        order = np.argsort(-c, kind="stable")
        units = []
        for k in (int(i) for i in order[:top] if c[i] > 0):
            up = bilinear_resize(A[b, k].float().cpu().contiguous(), hw, concepts.align_corners).numpy()
            thr = float(concepts.thresholds[k])
            label, category = concepts.concept(k)
            units.append(UnitContribution(
                unit=k, contribution=float(c[k]), share=float(share[k]), label=label, category=category,
                iou=float(concepts.iou[k]), threshold=thr, activation=up,
                mask=up > thr if concepts.threshold_op == ">" else up >= thr,
                featviz=fv(k), top_images=concepts.top_image(k)))
        t, pred = int(targets[b, 0]), int(probs[b].argmax())
        out.append(Explanation(
            image=to_image_array(x[b]), layer=layer, target=t, target_name=str(names[t]),
            probability=float(probs[b, t]), predicted=pred, predicted_name=str(names[pred]),
            contributions=c, total=float(c.sum()), units=units, logit=float(scores[b, t].detach()),
            close_concepts=close_concepts(str(names[t]), concepts.vocabulary),
            concepts=_group(c, share, order, concept_of, by_category=False),
            categories=_group(c, share, order, concept_of, by_category=True),
            iou_threshold=concepts.iou_threshold))
    return out


def _group(c, share, order, concept_of, by_category: bool) -> list[ConceptContribution]:
    """Sum the contributions per concept (label, category) or per category; units in ranked order."""
    groups: dict = {}
    for k in (int(i) for i in order):
        label, category = concept_of[k]
        key = (category or NO_CONCEPT) if by_category else (label, category)
        groups.setdefault(key, []).append(k)
    rows = []
    for key, ks in groups.items():
        name, category = (key, key) if by_category else key
        rows.append(ConceptContribution(name=name, category=category if category != NO_CONCEPT else "",
                                        units=ks, contribution=float(c[ks].sum()), share=float(share[ks].sum())))
    return sorted(rows, key=lambda r: -r.contribution)
