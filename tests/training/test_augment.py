"""Batched segmentation augmentation: shapes, label sets, image/label alignment, flip, cat_max_ratio,
photometric conventions, determinism."""

import colorsys

import numpy as np
import pytest
import torch

from paca_hf.images import reduce_labels
from paca_hf.training.segmentation.augmentation import (
    SegmentationTrainAugment,
    hsv_to_rgb,
    photometric_distortion,
    random_crop_box,
    rescale_size,
    rgb_to_hsv,
)


def _block_labels(height, width, block, num_classes, seed):
    """Random labels constant on block x block squares, (H, W) int64 numpy."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, num_classes, size=(height // block + 1, width // block + 1))
    return np.kron(grid, np.ones((block, block), dtype=np.int64))[:height, :width]


def _coded_image(label, coord_scale):
    """Channel 0 = label * 10, channel 1 = row * coord_scale, channel 2 = column * coord_scale (uint8)."""
    h, w = label.shape
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.stack([label * 10, rows * coord_scale, cols * coord_scale]).astype(np.uint8)
    return torch.from_numpy(img)


def _plain(**kwargs):
    """Augment without photometric distortion and without normalisation (values stay 0..255)."""
    kwargs.setdefault("photometric", False)
    return SegmentationTrainAugment(mean=None, std=None, **kwargs)


def test_output_shapes_and_dtypes_for_mixed_sizes():
    gen = torch.Generator().manual_seed(0)
    sizes = [(50, 70), (64, 40), (33, 90)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in sizes]
    labels = [torch.randint(0, 5, (h, w), generator=gen) for h, w in sizes]
    aug = SegmentationTrainAugment(crop_size=(32, 48), scale=(200, 50))
    x, y = aug(images, labels, generator=gen)
    assert x.shape == (3, 3, 32, 48) and x.dtype == torch.float32
    assert y.shape == (3, 32, 48) and y.dtype == torch.long
    # a stacked float batch and PIL / numpy inputs work too
    batch = torch.rand(2, 3, 40, 40, generator=gen) * 255
    x, y = aug(batch, torch.zeros(2, 40, 40, dtype=torch.long), generator=gen)
    assert x.shape == (2, 3, 32, 48) and y.shape == (2, 32, 48)
    from PIL import Image

    pil = [Image.fromarray(np.zeros((30, 44, 3), np.uint8)), Image.fromarray(np.zeros((50, 20, 3), np.uint8))]
    x, y = aug(pil, [np.zeros((30, 44), np.uint8), Image.fromarray(np.zeros((50, 20), np.uint8))], generator=gen)
    assert x.shape == (2, 3, 32, 48) and y.shape == (2, 32, 48)


def test_label_values_stay_in_the_original_set_plus_ignore():
    gen = torch.Generator().manual_seed(1)
    values = torch.tensor([0, 3, 7, 200])
    labels = [values[torch.randint(0, 4, (h, w), generator=gen)] for h, w in [(40, 60), (60, 30), (20, 20)]]
    images = [torch.zeros(3, *lab.shape, dtype=torch.uint8) for lab in labels]
    aug = SegmentationTrainAugment(crop_size=(64, 64), scale=(300, 60), ratio_range=(0.5, 1.0))
    _, y = aug(images, labels, generator=gen)
    assert set(y.unique().tolist()) <= {0, 3, 7, 200, 255}
    # the (20, 20) image is rescaled by min(300 r / 20, 60 r / 20) = 3 r <= 3, to at most 60 x 60: padded
    assert (y[2] == 255).any() and not (y[:, :20, :20] == 255).any()
    # the label reduction it uses, by hand: 0 -> 255 (ignored), k -> k - 1, 255 stays
    raw = torch.tensor([[0, 1, 5], [150, 255, 2]])
    assert reduce_labels(raw).tolist() == [[255, 0, 4], [149, 255, 1]]
    aug = SegmentationTrainAugment(
        crop_size=(8, 8),
        scale=(8, 8),
        ratio_range=(1, 1),
        reduce_zero_label=True,
        cat_max_ratio=1.0,
        photometric=False,
    )
    _, y = aug([torch.zeros(3, 8, 8)], [torch.tensor([[0, 1, 2, 3] * 2] * 8)], generator=gen)
    assert set(y.unique().tolist()) == {255, 0, 1, 2}


def _check_padding_and_valid_box(x, y):
    """Padding: label 255 and image 0 exactly; the non-padded part is a top-left rectangle. Returns (h, w)."""
    valid = y != 255
    h = int(valid.any(dim=1).sum())
    w = int(valid.any(dim=0).sum())
    assert valid[:h, :w].all() and not valid[h:, :].any() and not valid[:, w:].any()
    assert (x[:, ~valid] == 0).all()
    return h, w


def test_alignment_without_resize_is_exact_under_crop_flip_and_pad():
    # ratio 1 and scale = the image size: no resampling, so every non-padded output pixel must carry the
    # label of the source pixel its image value encodes (channel 1 = row, channel 2 = column, channel 0 = 10 * label)
    label = _block_labels(40, 60, block=5, num_classes=20, seed=0)
    image = _coded_image(label, coord_scale=1)
    aug = _plain(crop_size=(32, 72), scale=(60, 40), ratio_range=(1.0, 1.0), cat_max_ratio=1.0)
    gen = torch.Generator().manual_seed(0)
    x, y = aug([image] * 8, [torch.from_numpy(label)] * 8, generator=gen)
    flips = 0
    for xi, yi in zip(x, y):
        h, w = _check_padding_and_valid_box(xi, yi)
        assert (h, w) == (32, 60)  # crop height 32 of 40, full width 60 (then 12 columns of padding)
        src_rows = xi[1, :h, :w].round().long()
        src_cols = xi[2, :h, :w].round().long()
        assert (yi[:h, :w] == torch.from_numpy(label)[src_rows, src_cols]).all()
        assert (xi[0, :h, :w] == 10 * yi[:h, :w]).all()
        # the crop is a contiguous window, possibly mirrored
        assert (src_rows == src_rows[:, :1] + torch.arange(w)[None] * 0).all()
        assert (src_rows[:, 0] == src_rows[0, 0] + torch.arange(h)).all()
        mirrored = bool(src_cols[0, 0] == w - 1)
        flips += mirrored
        expected_cols = torch.arange(w).flip(0) if mirrored else torch.arange(w)
        assert (src_cols == expected_cols[None]).all()
    assert 0 < flips < 8  # both flipped and unflipped samples were seen (p = 0.5)


def test_alignment_with_random_resize():
    # resize factors within [0.5, 2]: channels 1, 2 hold 4 * (row, column), a linear ramp that bilinear
    # resizing reproduces exactly, so each output pixel tells which source position it was sampled at; the
    # nearest-neighbour label must come from a source pixel next to that position (within the 4x4 window).
    gen = torch.Generator().manual_seed(3)
    labels = [
        _block_labels(h, w, block=8, num_classes=25, seed=s) for s, (h, w) in enumerate([(40, 60), (40, 52), (64, 40)])
    ]
    images = [_coded_image(lab, coord_scale=4) for lab in labels]
    aug = _plain(crop_size=(24, 36), scale=(1000, 40), ratio_range=(0.5, 2.0), cat_max_ratio=1.0)
    checked = 0
    for _ in range(4):
        x, y = aug(images, [torch.from_numpy(lab) for lab in labels], generator=gen)
        for xi, yi, lab in zip(x, y, labels):
            h, w = _check_padding_and_valid_box(xi, yi)
            src_r, src_c = xi[1, :h, :w] / 4.0, xi[2, :h, :w] / 4.0
            ok = torch.zeros(h, w, dtype=torch.bool)
            lab_t = torch.from_numpy(lab)
            for dr in (-1, 0, 1, 2):
                for dc in (-1, 0, 1, 2):
                    r = (src_r.floor().long() + dr).clamp(0, lab.shape[0] - 1)
                    c = (src_c.floor().long() + dc).clamp(0, lab.shape[1] - 1)
                    ok |= lab_t[r, c] == yi[:h, :w]
            assert ok.all()
            # where the label is uniform around the pixel, channel 0 is exactly 10 * label
            lab_here = yi[:h, :w]
            interior = torch.ones_like(lab_here, dtype=torch.bool)
            interior[:3, :] = interior[-3:, :] = False
            interior[:, :3] = interior[:, -3:] = False
            for dr in range(-2, 3):
                for dc in range(-2, 3):
                    interior &= torch.roll(lab_here, (dr, dc), (0, 1)) == lab_here
            assert torch.allclose(xi[0, :h, :w][interior], 10.0 * lab_here[interior].float(), atol=1e-3)
            checked += int(interior.sum())
    assert checked > 1000


def test_flip_with_p1_flips_image_and_label_and_p0_does_not():
    label = _block_labels(20, 30, block=3, num_classes=9, seed=4)
    image = _coded_image(label, coord_scale=2)
    common = {"crop_size": (20, 30), "scale": (30, 20), "ratio_range": (1.0, 1.0), "cat_max_ratio": 1.0}
    x, y = _plain(flip_prob=1.0, **common)([image], [torch.from_numpy(label)], generator=torch.Generator())
    np.testing.assert_array_equal(y[0].numpy(), label[:, ::-1])
    np.testing.assert_array_equal(x[0].numpy(), image.numpy()[:, :, ::-1].astype(np.float32))
    x, y = _plain(flip_prob=0.0, **common)([image], [torch.from_numpy(label)], generator=torch.Generator())
    np.testing.assert_array_equal(y[0].numpy(), label)
    np.testing.assert_array_equal(x[0].numpy(), image.numpy().astype(np.float32))


def _largest_class_share(y):
    shares = []
    for yi in y:
        counts = torch.bincount(yi[yi != 255].reshape(-1))
        counts = counts[counts > 0]
        shares.append(float(counts.max()) / float(counts.sum()) if counts.numel() > 1 else 1.0)
    return np.array(shares)


def test_cat_max_ratio_is_respected():
    # 32 x 64 map: columns 0..31 class 1, columns 32..63 stripes of 4 alternating classes 2 and 3.
    # A 16 x 16 crop at column offset o (0..48) passes iff o >= 21 (class 1 then covers < 12 of 16 columns):
    # 28 of 49 offsets, so 11 draws all failing is rare (~1e-4); without the check 43% of crops fail.
    label = np.ones((32, 64), dtype=np.int64)
    label[:, 32:] = 2 + (np.arange(32) // 4) % 2
    image = torch.zeros(3, 32, 64)
    common = {"crop_size": (16, 16), "scale": (64, 32), "ratio_range": (1.0, 1.0), "flip_prob": 0.0}
    n = 40
    _, y = _plain(cat_max_ratio=0.75, **common)(
        [image] * n, [torch.from_numpy(label)] * n, generator=torch.Generator().manual_seed(0)
    )
    assert (_largest_class_share(y) < 0.75).all()
    _, y = _plain(cat_max_ratio=1.0, **common)(
        [image] * n, [torch.from_numpy(label)] * n, generator=torch.Generator().manual_seed(0)
    )
    assert (_largest_class_share(y) >= 0.75).mean() > 0.2


def test_cat_max_ratio_ignores_the_ignore_index():
    # 4 x 10 map: column 0 class 1, column 1 class 2, the rest 255; 4 x 8 crops start at column 0, 1 or 2.
    # Only the crop at column 0 holds two classes (1:1 once 255 is left out), so it is accepted whenever one
    # of the 11 draws hits it (probability 0.99). Counting 255 as a class would reject it too (6/8 = 0.75).
    label = torch.full((4, 10), 255)
    label[:, 0], label[:, 1] = 1, 2
    lefts = [random_crop_box(label, (4, 8), 0.75, 255, torch.Generator().manual_seed(s))[2] for s in range(20)]
    assert sum(left == 0 for left in lefts) >= 17


def test_determinism_with_a_seeded_generator():
    gen = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (3, 45, 60), dtype=torch.uint8, generator=gen) for _ in range(3)]
    labels = [torch.randint(0, 4, (45, 60), generator=gen) for _ in range(3)]
    aug = SegmentationTrainAugment(crop_size=(32, 32), scale=(200, 50))
    a = aug(images, labels, generator=torch.Generator().manual_seed(11))
    b = aug(images, labels, generator=torch.Generator().manual_seed(11))
    c = aug(images, labels, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # the constructor seed gives a private generator: two instances with the same seed agree
    d = SegmentationTrainAugment(crop_size=(32, 32), scale=(200, 50), seed=3)(images, labels)
    e = SegmentationTrainAugment(crop_size=(32, 32), scale=(200, 50), seed=3)(images, labels)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


def test_hsv_conversions_match_colorsys():
    rgb = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(0))
    rgb[:, 0, 0] = 0.5  # grey: hue and saturation 0
    rgb[:, 0, 1] = 0.0  # black
    hsv = rgb_to_hsv(rgb)
    for i in range(6):
        for j in range(7):
            expected = colorsys.rgb_to_hsv(*rgb[:, i, j].tolist())
            assert hsv[:, i, j].tolist() == pytest.approx(expected, abs=1e-6)
            back = colorsys.hsv_to_rgb(*hsv[:, i, j].tolist())
            assert hsv_to_rgb(hsv)[:, i, j].tolist() == pytest.approx(back, abs=1e-6)


def test_photometric_distortion_conventions():
    gen = torch.Generator().manual_seed(0)
    n = 1000
    # grey pixels stay grey (saturation / hue cannot act on them); brightness / contrast leave one unchanged
    # only when both are skipped: probability 1/4
    grey = torch.full((n, 3, 1, 1), 128.0)
    out = photometric_distortion(grey, gen)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-3) and torch.allclose(out[:, 0], out[:, 2], atol=1e-3)
    assert 0.2 < float((out - 128).abs().max(dim=1).values.flatten().lt(1e-4).float().mean()) < 0.3
    assert out.min() >= 0 and out.max() <= 255
    # a dark red pixel: brightness, contrast and saturation keep hue 0 (no clipping at 255 can happen here),
    # so the output hue is the hue step: a multiple of 2 degrees in [-36, 34] (OpenCV's 2-degree units,
    # numpy's randint(-18, 18)), applied to about half the samples
    red = torch.zeros(n, 3, 1, 1)
    red[:, 0] = 100.0
    out = photometric_distortion(red, gen)
    hues = np.array([colorsys.rgb_to_hsv(*(out[i, :, 0, 0] / 255).tolist())[0] for i in range(n)]) * 360
    hues = (hues + 180) % 360 - 180
    steps = hues / 2
    assert np.abs(steps - np.round(steps)).max() < 1e-2
    assert steps.min() >= -18 - 1e-3 and steps.max() <= 17 + 1e-3
    assert steps.min() < -15 and steps.max() > 14
    assert 0.4 < np.mean(np.abs(steps) > 0.5) < 0.6


def test_rescale_size_hand_computed():
    # factor = min(long_max / long_edge, short_max / short_edge); size = int(x * factor + 0.5)
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)  # min(2048/683, 512/512) = 1
    assert rescale_size(300, 400, (2048, 512)) == (512, 683)  # 512/300: 400 * 1.70667 = 682.67 -> 683
    assert rescale_size(1000, 250, (2048, 512)) == (2048, 512)  # 2048/1000 = 512/250 = 2.048
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long edge binds: 100 * 2.048 = 204.8 -> 205


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    label = _block_labels(60, 90, block=5, num_classes=10, seed=0)
    image = _coded_image(label, coord_scale=2)
    aug = SegmentationTrainAugment(crop_size=(48, 48), scale=(400, 60))
    cpu = aug([image] * 4, [torch.from_numpy(label)] * 4, generator=torch.Generator().manual_seed(0))
    gpu = aug([image.cuda()] * 4, [torch.from_numpy(label).cuda()] * 4, generator=torch.Generator().manual_seed(0))
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert torch.equal(cpu[1], gpu[1].cpu())
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-3)
