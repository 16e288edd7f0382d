"""Deletion and insertion curves (Petsiuk, Das & Saenko, "RISE", BMVC 2018): remove the most important
pixels first and watch the score fall (deletion, lower area is better), or add them to a blurred
image and watch it rise (insertion, higher area is better)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unitscope.saliency.base import batched, check_input, check_positive_int
from unitscope.saliency.baselines import make_baseline


@dataclass
class DeletionInsertionResult:
    """fractions (S+1,) of pixels changed; deletion, insertion (B, S+1) scores along the curves;
    deletion_auc, insertion_auc (B,) trapezoid areas under them (float64)."""
    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor

    def plot(self, path=None, index=0, title=None):
        """Both curves of image `index`; saved to `path` when given. Returns the figure."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        f = self.fractions.numpy()
        ax.plot(f, self.deletion[index].numpy(), label=f"deletion (AUC {self.deletion_auc[index]:.3f})")
        ax.plot(f, self.insertion[index].numpy(), label=f"insertion (AUC {self.insertion_auc[index]:.3f})")
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("score")
        ax.set_title(title or "deletion / insertion")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _auc(fractions, curves):
    return torch.trapezoid(curves, fractions[None], dim=1)


@torch.no_grad()
def _curve(method, x, order, start_img, end_img, targets, counts, batch_size):
    """Scores (B, S+1): image (b, i) shows end_img at its first counts[i] pixels of order, start_img elsewhere."""
    B, C, H, W = x.shape
    S1 = len(counts)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(H * W, device=x.device).expand(B, -1))  # rank of every pixel
    out = torch.empty((B, S1), dtype=torch.float64)
    # curve point (b, i) at flat index b * S1 + i
    for start, stop in batched(B * S1, batch_size):
        p = torch.arange(start, stop, device=x.device)
        b, i = p // S1, p % S1
        mask = (ranks[b] < counts.to(x.device)[i][:, None]).view(-1, 1, H, W).to(x.dtype)
        imgs = start_img[b] + mask * (end_img[b] - start_img[b])
        s = method.scores(imgs)
        out.view(-1)[start:stop] = s.gather(1, targets[b][:, None])[:, 0].double().cpu()
    return out


def deletion_insertion(method, model, x, target=None, *, steps=50, batch_size=64, output="softmax",
                       deletion_baseline="black", insertion_baseline="blur", plot=None):
    """Deletion and insertion AUCs of `method`'s maps.

    Args:
        method: a unitscope.saliency method; its map (B, H, W) orders the pixels, most important
            first ((B, C, H, W) maps are summed over C).
        model (nn.Module): the classifier scored along the curves (with method.preprocess in front).
        x (Tensor[B, C, H, W]): images. target: as for the method (default the top class).
        steps (int): the curves have steps + 1 points, about H*W/steps pixels apart.
        output ("softmax" default as in RISE, "logits", "log_softmax" or callable): the score.
        deletion_baseline, insertion_baseline: what deleted pixels become / the canvas insertion
            starts from (see baselines.make_baseline); RISE uses black and a blurred copy.
        plot (path, optional): also save image 0's curves there.

    Returns DeletionInsertionResult.
    """
    from unitscope.saliency.base import Attribution

    x = check_input(x)
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    scorer = Attribution(model, output=output, preprocess=method.preprocess)
    targets, _ = scorer.resolve_targets(x, target)
    targets = targets[:, 0]
    m = method(x, targets)
    if m.dim() == 4:
        m = m.sum(dim=1)
    B, C, H, W = x.shape
    if m.shape != (B, H, W):
        raise ValueError(f"the method's maps must have shape (B, H, W) = ({B}, {H}, {W}), got {tuple(m.shape)}")
    order = torch.argsort(m.detach().flatten(1).float(), dim=1, descending=True, stable=True)
    counts = torch.round(torch.linspace(0, H * W, steps + 1, dtype=torch.float64)).long()
    fractions = counts.double() / (H * W)
    xd = x.detach()
    dele = _curve(scorer, xd, order, xd, make_baseline(xd, deletion_baseline), targets, counts, batch_size)
    ins = _curve(scorer, xd, order, make_baseline(xd, insertion_baseline), xd, targets, counts, batch_size)
    result = DeletionInsertionResult(fractions, dele, ins, _auc(fractions, dele), _auc(fractions, ins))
    if plot is not None:
        import matplotlib.pyplot as plt

        plt.close(result.plot(plot))
    return result
