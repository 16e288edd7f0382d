"""Feature visualization: the input that maximizes (or minimizes) a neuron, channel, layer or class,
kept interpretable by transforms, frequency-scaled Fourier parameterization, decorrelated colour and
penalties, `render(model, objectives.channel("layer4", 7))`; and the dataset images that do so,
`dataset_examples(model, "layer4", dataset)`."""
from unitscope.featviz import objectives, transforms
from unitscope.featviz.dataset_examples import DatasetExamples, ImageFolder, dataset_examples, receptive_field
from unitscope.featviz.objectives import (Objective, blur, channel, class_logit, direction, diversity, l1, l2, layer,
                                          neuron, total_variation)
from unitscope.featviz.param import FourierImage, PixelImage
from unitscope.featviz.render import Rendering, render, score
from unitscope.featviz.spectrum import high_frequency_fraction, radial_power_spectrum

__all__ = ["objectives", "transforms", "Objective", "blur", "channel", "class_logit", "direction", "diversity",
           "l1", "l2", "layer", "neuron", "total_variation", "FourierImage", "PixelImage", "Rendering", "render",
           "score", "high_frequency_fraction", "radial_power_spectrum", "DatasetExamples", "ImageFolder",
           "dataset_examples", "receptive_field"]
