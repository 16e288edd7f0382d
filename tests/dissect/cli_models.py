"""Model factories for the CLI tests (--model cli_models:tiny)."""
import torch


def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4, padding=2), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 6, 3, stride=2, padding=1))


def not_a_model():
    return 42


class _Slow(torch.nn.Sequential):
    def forward(self, x):
        import time

        time.sleep(0.15)  # slower than tqdm's default redraw interval: every batch would be drawn
        return super().forward(x)


def slow():
    return _Slow(*tiny())


CALLS = [0]  # forward calls of counted() models in this process


class _Counted(torch.nn.Sequential):
    def forward(self, x):
        CALLS[0] += 1
        return super().forward(x)


def counted():
    """tiny() and a ReLU6-like clamp at 0.1 (module "3": units saturated at 0.1 on [0, 1] input),
    counting its forward calls in CALLS."""
    return _Counted(*tiny(), torch.nn.Hardtanh(0.0, 0.1))
