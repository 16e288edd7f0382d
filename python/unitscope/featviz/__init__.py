"""Feature visualization: the input that maximizes (or minimizes) a neuron, channel, layer or class,
kept interpretable by transforms, frequency-scaled Fourier parameterization, decorrelated colour and
penalties, or by learned priors (a generator's latent space, a denoising autoencoder); and its
counterpart, the adversarial example. `render(model, objectives.channel("layer4", 7))`."""
from unitscope.featviz import objectives, transforms
from unitscope.featviz.adversarial import AdversarialResult, Contrast, adversarial, contrast, log_probability
from unitscope.featviz.dae import DenoisingAutoencoder, dae_prior, load_dae, reconstruction_error
from unitscope.featviz.objectives import Objective, channel, class_logit, direction, layer, neuron, total_variation
from unitscope.featviz.param import FourierImage, GeneratorImage, PixelImage, generator
from unitscope.featviz.render import Rendering, render

__all__ = ["objectives", "transforms", "Objective", "channel", "class_logit", "direction", "layer", "neuron",
           "total_variation", "FourierImage", "PixelImage", "GeneratorImage", "generator", "Rendering", "render",
           "DenoisingAutoencoder", "dae_prior", "load_dae", "reconstruction_error",
           "AdversarialResult", "Contrast", "adversarial", "contrast", "log_probability"]
