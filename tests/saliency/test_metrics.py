"""Pointing game, relevance mass and faithfulness correlation: Quantus's definitions (quantus does not
import here: it needs pandas), checked on planted maps and against a plain re-computation."""
import math

import numpy as np
import pytest
import torch
from tiny_models import Linear, SmallCNN
from torch import nn

from unitscope.saliency import VanillaGradient
from unitscope.saliency.metrics import faithfulness_correlation, pointing_game, relevance_mass


def test_pointing_game_and_relevance_mass_by_hand():
    maps = torch.zeros(3, 4, 4)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    maps[0, 0, 1] = 5.0            # the maximum inside the mask: a hit
    maps[0, 3, 3] = 1.0
    maps[1, 3, 3] = 5.0            # outside: a miss
    maps[1, 0, 0] = 1.0
    masks[2] = False               # empty mask: NaN
    pg = pointing_game(maps, masks)
    assert pg[0] == 1.0 and pg[1] == 0.0 and math.isnan(pg[2])
    assert pointing_game(maps, masks, weighted=True)[0] == pytest.approx(1 - 4 / 16)
    rm = relevance_mass(maps, masks)
    assert rm[0] == pytest.approx(5 / 6) and rm[1] == pytest.approx(1 / 6) and math.isnan(rm[2])
    signed = maps.clone()
    signed[0, 3, 2] = -2.0
    assert relevance_mass(signed, masks)[0] == pytest.approx(5 / 4)
    assert relevance_mass(signed, masks, absolute=True)[0] == pytest.approx(5 / 8)
    # (B, C, H, W) maps: the mask holds for every channel
    assert pointing_game(maps[:, None].repeat(1, 3, 1, 1), masks)[0] == 1.0


def test_faithfulness_correlation_planted_on_a_linear_model():
    # f = W x + b: setting a subset to the image minimum drops the score by sum W_i (x_i - min)
    m = Linear(shape=(3, 6, 5)).double().eval()
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([1, 3])
    low = x.flatten(1).amin(1)[:, None, None, None]
    exact = torch.stack([m.w(int(t)) for t in c]) * (x - low)
    got = faithfulness_correlation(lambda z: m(z), x, exact, c, subset_size=20, n_runs=30)
    torch.testing.assert_close(got, torch.ones(2, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    got = faithfulness_correlation(lambda z: m(z), x, -exact, c, subset_size=20, n_runs=30)
    torch.testing.assert_close(got, -torch.ones(2, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_faithfulness_correlation_recomputed():
    net = SmallCNN().double()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = torch.tensor([0, 4])
    g = VanillaGradient(net, reduce="signed", channel=None)
    maps = g(x, c) * x
    got = faithfulness_correlation(g, x, maps, c, subset_size=30, n_runs=12, seed=3, batch_size=5)
    # the same subsets (the same generator calls), then numpy/scipy-style Pearson per image
    gen = torch.Generator().manual_seed(3)
    n = x[0].numel()
    subsets = [[torch.randperm(n, generator=gen)[:30] for _ in range(2)] for _ in range(12)]
    for b in range(2):
        with torch.no_grad():
            y = float(net(x[b:b + 1])[0, c[b]])
        drops, sums = [], []
        for r in range(12):
            xp = x[b].flatten().clone()
            xp[subsets[r][b]] = x[b].min()
            with torch.no_grad():
                drops.append(y - float(net(xp.view(1, 3, 8, 8))[0, c[b]]))
            sums.append(float(maps[b].flatten()[subsets[r][b]].sum()))
        assert float(got[b]) == pytest.approx(float(np.corrcoef(drops, sums)[0, 1]), rel=1e-9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="maps .* and masks .* must share B, H and W"):
        pointing_game(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="maps and masks must be Tensors"):
        relevance_mass(np.zeros((1, 2, 2)), torch.zeros(1, 2, 2))
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="subset_size must be at most the number of input values 12, got 20"):
        faithfulness_correlation(m, torch.rand(1, 3, 2, 2), torch.rand(1, 2, 2), [0], subset_size=20)
    with pytest.raises(ValueError, match="n_runs must be an int >= 2, got 1"):
        faithfulness_correlation(m, torch.rand(1, 3, 2, 2), torch.rand(1, 2, 2), [0], subset_size=2, n_runs=1)
