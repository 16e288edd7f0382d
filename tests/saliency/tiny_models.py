"""Small models built for the saliency tests: their maps can be computed by hand."""
import torch
import torch.nn.functional as F
from torch import nn


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity map)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


class Linear(nn.Module):
    """scores = W x.flatten() + b: every gradient is a row of W."""

    def __init__(self, shape=(3, 6, 5), classes=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = shape[0] * shape[1] * shape[2]
        self.shape = shape
        self.fc = nn.Linear(n, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, n, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x):
        return self.fc(x.flatten(1))

    def w(self, c):
        return self.fc.weight[c].detach().view(self.shape)


class GapNet(nn.Module):
    """conv -> relu ("act") -> global average pool -> fc: the Grad-CAM weights are fc rows / (h w)."""

    def __init__(self, k=4, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, k, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(k, classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class MLP(nn.Module):
    """flatten -> L1 -> act1 -> L2 -> act2 -> L3, activations given as modules (guided backprop)."""

    def __init__(self, shape=(3, 4, 4), hidden=(7, 6), classes=3, act=nn.ReLU, reuse=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        n = shape[0] * shape[1] * shape[2]
        self.l1, self.l2, self.l3 = nn.Linear(n, hidden[0]), nn.Linear(hidden[0], hidden[1]), nn.Linear(hidden[1], classes)
        self.act1 = act()
        self.act2 = self.act1 if reuse else act()

    def forward(self, x):
        return self.l3(self.act2(self.l2(self.act1(self.l1(x.flatten(1))))))


class SmallCNN(nn.Module):
    """A few conv/BN/ReLU layers, eval mode: the generic model for batch/target consistency tests."""

    def __init__(self, classes=6, seed=0, act=nn.ReLU):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(),
                                      nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), act())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))
        randomize_batchnorm(self)
        self.eval()

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # one module used twice per block, as in torchvision
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """torchvision-style ResNet (conv1/bn1/relu/maxpool/layer1..layer4/avgpool/fc), in-place ReLUs."""

    def __init__(self, classes=10, width=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, 2))
        self.layer4 = nn.Sequential(BasicBlock(4 * width, 8 * width, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, classes)
        self.eval()

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class FunctionalReLU(nn.Module):
    """Activations written as functions: guided backprop must refuse it, naming them."""

    def __init__(self, kind="F.relu"):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        h = {"F.relu": F.relu, "torch.relu": torch.relu, "method": lambda t: t.relu(), "F.gelu": F.gelu}[self.kind](h)
        return self.fc(h.mean(dim=(2, 3)))


class SEGate(nn.Module):
    """ReLU modules plus a functional sigmoid gate (squeeze-excitation): guided backprop accepts it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.se = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        h = h * torch.sigmoid(self.se(h.mean(dim=(2, 3), keepdim=True)))
        return self.fc(h.mean(dim=(2, 3)))


class Explodes(nn.Module):
    """Raises in forward after `conv` ran (hooks must still be removed)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        self.act(self.conv(x))
        raise RuntimeError("boom")


class ReusedConv(nn.Module):
    """The same conv module applied twice per forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))


class MixedActs(nn.Module):
    """flatten -> l1 -> ReLU -> l2 -> ELU -> l3 -> GELU -> l4: a ReLU, another monotone activation and a
    non-monotone one, for the guided-backprop conventions (which activations are guided)."""

    def __init__(self, shape=(3, 4, 4), hidden=(8, 7, 6), classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        n = shape[0] * shape[1] * shape[2]
        self.l1, self.l2 = nn.Linear(n, hidden[0]), nn.Linear(hidden[0], hidden[1])
        self.l3, self.l4 = nn.Linear(hidden[1], hidden[2]), nn.Linear(hidden[2], classes)
        self.relu, self.elu, self.gelu = nn.ReLU(), nn.ELU(), nn.GELU()

    def forward(self, x):
        return self.l4(self.gelu(self.l3(self.elu(self.l2(self.relu(self.l1(x.flatten(1))))))))


class VGGish(nn.Module):
    """conv-BN-ReLU, conv-ReLU, max pool, conv-BN-ReLU, average pool, conv-ReLU6, adaptive average
    pool, flatten, linear-ReLU-dropout-linear; BN statistics randomized so folding matters."""

    def __init__(self, bias=True, bn=True, seed=0, inplace=True):
        super().__init__()
        torch.manual_seed(seed)
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=bias), norm(8), nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=bias), norm(16), nn.ReLU(inplace=inplace), nn.AvgPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=bias), nn.ReLU6(inplace=inplace))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(64, 32, bias=bias),
                                        nn.ReLU(inplace=inplace), nn.Dropout(), nn.Linear(32, 10, bias=bias))
        randomize_batchnorm(self)
        self.eval()

    def forward(self, x):
        return self.classifier(self.features(x))
