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
