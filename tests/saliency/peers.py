"""Import the peer libraries zennit and pytorch-grad-cam (`grad-cam`) for the comparison tests.

Both import torchvision at module level, and torchvision's PyPI build does not load beside the CPU
build of torch that CI installs; they are installed with --no-deps and get here a minimal stand-in
`torchvision` module, put into sys.modules, with only the names they import:
zennit: torchvision.models.resnet.BasicBlock/Bottleneck (its ResNet canonizer rewrites the forward
of blocks of these classes: the stand-in's BasicBlock is tiny_models.BasicBlock, which has
torchvision's attribute names and forward); grad-cam: torchvision.transforms.Compose/Normalize/
ToTensor and transforms.functional.resize (used only by its augmentation helpers, never called here).
The stand-in is used even where a real torchvision would import, so that the ResNet canonizer
applies to the test's blocks.
"""
import sys
import types

import pytest
import tiny_models
import torch


def _standin():
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = tiny_models.BasicBlock

    class Bottleneck(tiny_models.BasicBlock):  # never instantiated here: zennit only checks isinstance
        pass
    resnet.Bottleneck = Bottleneck
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    def unavailable(*a, **k):
        raise RuntimeError("torchvision stand-in: transforms are not available in the tests")
    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(transforms, name, unavailable)
    functional.resize = unavailable
    transforms.functional = functional
    tv.models, models.resnet, tv.transforms = models, resnet, transforms
    return {"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet,
            "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def install_torchvision_standin():
    """Put the stand-in into sys.modules (once)."""
    if getattr(sys.modules.get("torchvision"), "_unitscope_standin", False):
        return
    mods = _standin()
    mods["torchvision"]._unitscope_standin = True
    sys.modules.update(mods)


def zennit():
    install_torchvision_standin()
    return pytest.importorskip("zennit")


def zennit_efficientnet_canonizers(model):
    """zennit ships no canonizer for EfficientNet: its skip connection `x = x + inputs` is forward code,
    and its convolutions (Conv2dStaticSamePadding) hold a padding child, so zennit's sequential
    BatchNorm merge sees no conv -> BN neighbours. Written here as zennit's own ResNet canonizer does:
    a Sum module for the addition, and a NamedMergeBatchNorm over the (conv, bn) pairs."""
    zennit()
    from efficientnet_lite_pytorch.model import MBConvBlock
    from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm
    from zennit.layer import Sum

    def forward(self, inputs, drop_connect_rate=None):  # MBConvBlock.forward in eval mode, no SE (Lite)
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        args = self._block_args
        if self.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
            x = self.canonizer_sum(torch.stack([inputs, x], dim=-1))
        return x

    def attributes(name, module):
        if isinstance(module, MBConvBlock):
            if module.has_se:
                raise ValueError("EfficientNet-Lite has no squeeze-excitation; this canonizer does not cover it")
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    pairs = [(["_conv_stem"], "_bn0"), (["_conv_head"], "_bn1")]
    for i in range(len(model._blocks)):
        b = f"_blocks.{i}"
        if hasattr(model._blocks[i], "_expand_conv"):
            pairs.append(([f"{b}._expand_conv"], f"{b}._bn0"))
        pairs += [([f"{b}._depthwise_conv"], f"{b}._bn1"), ([f"{b}._project_conv"], f"{b}._bn2")]
    return [NamedMergeBatchNorm(pairs), AttributeCanonizer(attributes)]
