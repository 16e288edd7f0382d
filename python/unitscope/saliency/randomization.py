"""Model parameter randomization test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS
2018): re-initialize layers from the output down, cascading, and measure how much the maps change
(Spearman rank correlation with the maps of the trained model). A method whose maps barely change
does not depend on what the model learned."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


def _average_ranks(v):
    """Ranks 0..n-1 of v (n,) with ties given their average rank, float64."""
    uniq, inv, counts = torch.unique(v, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    avg = start.double() + (counts.double() - 1) / 2
    return avg[inv]


def spearman(a, b):
    """Spearman rank correlation of each pair of maps: a, b (B, ...) -> float64 (B,).

    Ties get average ranks; a constant map gives NaN (the correlation is undefined)."""
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    out = []
    for x, y in zip(a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()):
        rx, ry = _average_ranks(x), _average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        den = (rx.norm() * ry.norm()).item()
        out.append((rx @ ry).item() / den if den > 0 else float("nan"))
    return torch.tensor(out, dtype=torch.float64)


@dataclass
class RandomizationResult:
    """layers: names randomized, in cascade order; spearman: float64 (L, B), the rank correlation of
    each image's map after randomizing layers[0..l] with its map on the trained model."""
    layers: list
    spearman: torch.Tensor

    def mean(self):
        """Mean over images per layer, (L,)."""
        return torch.nanmean(self.spearman, dim=1)

    def plot(self, path=None, title="cascading randomization"):
        """A line plot of the correlation per layer; saved to `path` when given. Returns the figure."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(self.layers) + 2), 3.2))
        xs = list(range(len(self.layers)))
        for b in range(self.spearman.shape[1]):
            ax.plot(xs, self.spearman[:, b].numpy(), color="0.7", lw=0.8)
        ax.plot(xs, self.mean().numpy(), color="C3", lw=2, marker="o", label="mean")
        ax.set_xticks(xs, self.layers, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("Spearman rank correlation")
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(title)
        ax.legend(loc="lower left")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _execution_order(method, model, x):
    """Names of the leaf modules with parameters, in the order they first run in a forward pass."""
    order, handles = [], []
    for name, m in model.named_modules():
        if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: order.append(name)))
    try:
        with torch.no_grad():
            method.scores(x[:1])
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def _randomize(module, gen_seed):
    """Re-initialize module's parameters (its own reset_parameters when it has one, else N(0, 0.01))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen_seed)
        done = False
        for m in module.modules():
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
                done = True
        if not done:
            with torch.no_grad():
                for p in module.parameters():
                    p.normal_(0.0, 0.01)


def randomization_test(method, model, x, target=None, *, layers=None, absolute=False, seed=0, plot=None):
    """Cascading model randomization test.

    Args:
        method: a unitscope.saliency method built on `model`.
        model (nn.Module): the model the method explains (method.model or a submodule of it); its
            weights are randomized in place and restored afterwards, also on error.
        x (Tensor[B, C, H, W]): images. target: as for the method; fixed from the trained model.
        layers (list of names, optional): the cascade, top first; default every leaf module with
            parameters, in reverse order of execution (output layer first).
        absolute (bool): correlate |map| instead of the signed map (Adebayo et al. report both).
        seed (int): seeds the re-initialization of layer i with seed + i.
        plot (path, optional): also save a plot there.

    Returns RandomizationResult (layers, spearman (L, B)).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not any(m is model for m in method.model.modules()):
        raise ValueError("model must be the model the method explains (method.model or one of its submodules)")
    targets, _ = method.resolve_targets(x, target)
    if layers is None:
        layers = list(reversed(_execution_order(method, model, x)))
    modules = []
    for name in layers:
        try:
            modules.append(model.get_submodule(name))
        except AttributeError:
            raise ValueError(f"layers: {name!r} is not a module of the model") from None
    if not modules:
        raise ValueError("layers is empty: nothing to randomize")

    def maps():
        m = method(x, targets)
        return m.abs() if absolute else m

    saved = copy.deepcopy(model.state_dict())
    rows = []
    try:
        ref = maps()
        for i, module in enumerate(modules):
            _randomize(module, seed + i)
            rows.append(spearman(ref, maps()))
    finally:
        model.load_state_dict(saved)
    result = RandomizationResult(list(layers), torch.stack(rows))
    if plot is not None:
        import matplotlib.pyplot as plt

        plt.close(result.plot(plot))
    return result
