"""Feature visualization: the input that maximizes (or minimizes) a neuron, channel, layer or class,
kept interpretable by transforms, frequency-scaled Fourier parameterization, decorrelated colour and
penalties, or by learned priors (a generator's latent space, a denoising autoencoder),
`render(model, objectives.channel("layer4", 7))`; the dataset images that do so,
`dataset_examples(model, "layer4", dataset)`; and its counterpart, the adversarial example."""
from unitscope.featviz import objectives, transforms
from unitscope.featviz.adversarial import AdversarialResult, Contrast, adversarial, contrast, log_probability
from unitscope.featviz.dae import DenoisingAutoencoder, dae_prior, load_dae, reconstruction_error
from unitscope.featviz.dataset_examples import DatasetExamples, ImageFolder, dataset_examples, receptive_field
from unitscope.featviz.objectives import (
    Objective,
    blur,
    channel,
    class_logit,
    direction,
    diversity,
    l1,
    l2,
    layer,
    neuron,
    total_variation,
)
from unitscope.featviz.param import FourierImage, GeneratorImage, PixelImage, generator
from unitscope.featviz.render import Rendering, render, score
from unitscope.featviz.spectrum import high_frequency_fraction, radial_power_spectrum

__all__ = ["objectives", "transforms", "Objective", "blur", "channel", "class_logit", "direction", "diversity",
           "l1", "l2", "layer", "neuron", "total_variation", "FourierImage", "PixelImage", "GeneratorImage",
           "generator", "Rendering", "render", "score", "high_frequency_fraction", "radial_power_spectrum",
           "DatasetExamples", "ImageFolder", "dataset_examples", "receptive_field", "DenoisingAutoencoder",
           "dae_prior", "load_dae", "reconstruction_error", "AdversarialResult", "Contrast", "adversarial",
           "contrast", "log_probability"]
