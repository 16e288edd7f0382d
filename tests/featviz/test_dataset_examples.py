"""featviz.dataset_examples on models built by hand: the top and bottom k against a brute-force
sort, receptive fields against the theoretical ones, patches around planted spots, every kind of
dataset input, and the bad paths."""
import pytest
import torch
from torch import nn

from unitscope import featviz


def _color_model():
    """1x1 conv: unit 0 = red, unit 1 = -green, unit 2 = blue - red."""
    m = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [-1.0, 0, 1.0]])[:, :, None, None])
    return m


def _images(n=23, size=12, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _brute(images, m, reduce):
    a = m(images).detach()
    return a.amax(dim=(2, 3)) if reduce == "max" else a.mean(dim=(2, 3))   # (N, K)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_top_and_bottom_k_equal_a_full_sort(reduce):
    images, m = _images(), _color_model()
    ex = featviz.dataset_examples(m, "0", list(images), k=4, preprocess=None, reduce=reduce, batch_size=5,
                                  progress=False)
    scores = _brute(images, m, reduce)
    for u in range(3):
        order = torch.argsort(-scores[:, u], stable=True)
        assert ex.indices(u, "top") == order[:4].tolist()
        torch.testing.assert_close(ex.values(u, "top"), scores[order[:4], u])
        low = torch.argsort(scores[:, u], stable=True)
        assert ex.indices(u, "bottom") == low[:4].tolist()
        torch.testing.assert_close(ex.values(u, "bottom"), scores[low[:4], u])
        torch.testing.assert_close(ex.images(u), images[order[:4]])
    assert ex.top_values.shape == (3, 4) and ex.top_boxes.shape == (3, 4, 4)


def test_batch_size_and_units_do_not_change_the_result():
    images, m = _images(), _color_model()
    a = featviz.dataset_examples(m, "0", list(images), k=3, units=[2, 0], preprocess=None, batch_size=23,
                                 progress=False)
    b = featviz.dataset_examples(m, "0", list(images), k=3, preprocess=None, batch_size=2, progress=False)
    for u in (0, 2):
        assert a.indices(u) == b.indices(u) and a.indices(u, "bottom") == b.indices(u, "bottom")
    with pytest.raises(ValueError, match="unit 1 was not collected"):
        a.indices(1)


def test_fewer_images_than_k():
    ex = featviz.dataset_examples(_color_model(), "0", list(_images(n=2)), k=5, preprocess=None, progress=False)
    assert len(ex.indices(0)) == 2 and ex.images(0).shape == (2, 3, 12, 12) and len(ex.patches(0)) == 2


def test_receptive_field_is_the_theoretical_one():
    # 5x5 (pad 2) then 3x3 stride 2 (pad 1): 7x7 field, stride 2
    m = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    rf = featviz.receptive_field(m, "2", (32, 32), preprocess=None)
    assert rf["method"] == "gradient" and rf["stride"] == (2.0, 2.0) and rf["centre"] == (8, 8)
    assert rf["box"] == (13, 13, 20, 20)
    # a deeper stack whose field is wider than the image: the box extends past it, centred
    deep = nn.Sequential(*[nn.Conv2d(3, 3, 7, padding=3) for _ in range(4)])
    rf = featviz.receptive_field(deep, "3", (16, 16), preprocess=None)
    y0, x0, y1, x1 = rf["box"]
    assert (y1 - y0, x1 - x0) == (25, 25) and y0 < 0 and y1 > 16      # 1 + 4 * (7 - 1), measured at 32px


def test_a_dead_centre_falls_back_to_the_stride():
    m = nn.Sequential(nn.Conv2d(3, 2, 3, stride=4, bias=False), nn.ReLU())
    with torch.no_grad():
        m[0].weight.fill_(-1.0)     # inputs >= 0: always negative, ReLU kills every gradient
    rf = featviz.receptive_field(m, "1", (32, 32), preprocess=None)
    assert rf["method"] == "stride"


def test_patches_sit_on_the_planted_spot():
    # grey images, each with one red 3x3 spot at a known place; unit 0 (red) peaks on the spot
    m = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False))
    with torch.no_grad():
        m[0].weight.zero_()
        m[0].weight[0, 0] = 1.0 / 9
        m[1].weight.fill_(1.0 / 9)
    images = torch.full((6, 3, 32, 32), 0.2)
    spots = [(0, 0), (20, 24), (10, 10), (28, 2), (15, 27), (3, 5)]  # the corner one dimmest: padding lowers it
    for i, (y, x) in enumerate(spots):
        images[i, 0, y:y + 3, x:x + 3] = 0.2 + 0.1 * (i + 1)
    ex = featviz.dataset_examples(m, "1", list(images), k=6, preprocess=None, progress=False)
    assert ex.receptive_field["box"][2] - ex.receptive_field["box"][0] == 5   # 3 + (3 - 1) * 1
    for idx, (y0, x0, y1, x1) in zip(ex.indices(0), ex.top_boxes[0].tolist()):
        y, x = spots[idx]
        # the patch overlaps the spot's centre pixel and lies inside the image
        assert y0 <= y + 1 < y1 and x0 <= x + 1 < x1 and 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32
    assert ex.indices(0) == [5, 4, 3, 2, 1, 0]      # brighter spots activate more
    patch = ex.patches(0, size=16)[0]
    assert patch.shape == (3, 16, 16) and patch.min() >= 0 and patch.max() <= 1


def test_inputs_folder_broden_dataloader_tuples(tmp_path):
    from unitscope.data import make_concept_dataset
    from unitscope.viz import save_image

    m = _color_model()
    images = _images(n=6, size=16)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(images):
        save_image(im.permute(1, 2, 0).numpy(), folder / ("sub" if i % 2 else ".") / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image")
    ex = featviz.dataset_examples(m, "0", folder, k=2, preprocess=None, size=16, progress=False)
    ds = featviz.ImageFolder(folder, 16)
    assert len(ds) == 6 and ex.images(0).shape == (2, 3, 16, 16)
    expected = _brute(torch.stack([ds[i] for i in range(6)]), m, "max")[:, 0].argsort(descending=True)[:2]
    assert ex.indices(0) == expected.tolist()

    broden = make_concept_dataset(tmp_path / "concepts", 5, size=32)
    ex = featviz.dataset_examples(m, "0", broden, k=2, preprocess=None, size=32, progress=False)
    assert ex.images(1).shape == (2, 3, 32, 32)

    pairs = [(im, 0) for im in images]
    loader = torch.utils.data.DataLoader(pairs, batch_size=4)
    a = featviz.dataset_examples(m, "0", loader, k=2, preprocess=None, progress=False)
    b = featviz.dataset_examples(m, "0", pairs, k=2, preprocess=None, progress=False)
    assert a.indices(2) == b.indices(2)
    with pytest.raises(ValueError, match="must read a map-style dataset in order"):
        featviz.dataset_examples(m, "0", torch.utils.data.DataLoader(pairs, shuffle=True), progress=False)


def test_bad_input(tmp_path):
    m, images = _color_model(), list(_images(n=3))
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        featviz.dataset_examples(m, "0", images, k=0)
    with pytest.raises(ValueError, match="reduce must be 'max' or 'mean', got 'median'"):
        featviz.dataset_examples(m, "0", images, reduce="median")
    with pytest.raises(ValueError, match=r"units must be channel indices of layer '0' in \[0, 3\), got \[3\]"):
        featviz.dataset_examples(m, "0", images, units=[0, 3], preprocess=None, progress=False)
    with pytest.raises(ValueError, match="holds no image"):
        featviz.dataset_examples(m, "0", tmp_path, progress=False)
    with pytest.raises(ValueError, match="similar names: 0"):
        featviz.dataset_examples(m, "00", images)
    with pytest.raises(TypeError, match="dataset items must be image tensors"):
        featviz.dataset_examples(m, "0", ["a", "b"], preprocess=None, progress=False)
    with pytest.raises(ValueError, match="images differ in size"):
        featviz.dataset_examples(m, "0", [torch.rand(3, 8, 8), torch.rand(3, 9, 9)], preprocess=None, progress=False)
    with pytest.raises(ValueError, match="patch=False"):
        featviz.dataset_examples(m, "0", images, patch=False, preprocess=None, progress=False).patches(0)


def test_a_call_of_a_module_run_twice_by_number():
    # one 1x1 conv applied twice: 'conv@1' is its second call, and 'conv' alone is ambiguous
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _color_model()[0]

        def forward(self, x):
            return self.conv(self.conv(x))

    m, images = Twice(), _images(9)
    ex = featviz.dataset_examples(m, "conv@1", list(images), k=3, preprocess=None, batch_size=4, progress=False)
    assert ex.layer == "conv@1"
    with torch.no_grad():
        second = m(images).amax(dim=(2, 3))
    for u in range(3):
        torch.testing.assert_close(ex.values(u, "top"), second[:, u].topk(3).values)
    assert ex.receptive_field["method"] == "gradient"
    with pytest.raises(ValueError, match=r"layer 'conv' \(Conv2d\) is called 2 times per forward pass.*conv@0, conv@1"):
        featviz.dataset_examples(m, "conv", list(images), k=3, preprocess=None, progress=False)
    assert not m.conv._forward_hooks

