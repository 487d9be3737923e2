"""The shipped `evaluate` metrics (mean_iou, accuracy_topk) against hand-computed values."""

import os

import numpy as np
import pytest

from paca_hf.metrics import METRIC_NAMES, load_metric, metric_path


@pytest.fixture(scope="module")
def miou():
    return load_metric("mean_iou")


@pytest.fixture(scope="module")
def topk():
    return load_metric("accuracy_topk")


# A 2x3 example with 3 classes, worked out by hand:
#   pred = 0 1 1     ref = 0 1 2
#          2 2 0           2 1 0
# class 0: pred at (0,0),(1,2); ref at (0,0),(1,2)      -> I = 2, U = 2 + 2 - 2 = 2 -> IoU 1,   acc 2/2
# class 1: pred at (0,1),(0,2); ref at (0,1),(1,1)      -> I = 1, U = 2 + 2 - 1 = 3 -> IoU 1/3, acc 1/2
# class 2: pred at (1,0),(1,1); ref at (0,2),(1,0)      -> I = 1, U = 2 + 2 - 1 = 3 -> IoU 1/3, acc 1/2
# mean IoU = (1 + 1/3 + 1/3) / 3 = 5/9; mean acc = (1 + 1/2 + 1/2) / 3 = 2/3; overall = 4 correct / 6 = 2/3
PRED = np.array([[0, 1, 1], [2, 2, 0]])
REF = np.array([[0, 1, 2], [2, 1, 0]])


def test_mean_iou_hand_computed(miou):
    out = miou.compute(predictions=[PRED], references=[REF], num_labels=3, ignore_index=255)
    np.testing.assert_allclose(out["per_category_iou"], [1.0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(out["per_category_accuracy"], [1.0, 0.5, 0.5])
    assert out["mean_iou"] == pytest.approx(5 / 9)
    assert out["mean_accuracy"] == pytest.approx(2 / 3)
    assert out["overall_accuracy"] == pytest.approx(2 / 3)


def test_mean_iou_accumulates_areas_over_images(miou):
    # Second image 1x2: pred = ref = [1, 1]. Class 1 totals: I = 1 + 2 = 3, pred 2 + 2 = 4, ref 2 + 2 = 4,
    # U = 4 + 4 - 3 = 5 -> IoU 3/5 (not the mean of per-image IoUs, 1/3 and 1); acc 3/4.
    # Classes 0 and 2 unchanged. overall = (4 + 2) / (6 + 2) = 3/4.
    out = miou.compute(
        predictions=[PRED, np.array([[1, 1]])], references=[REF, np.array([[1, 1]])], num_labels=3, ignore_index=255
    )
    np.testing.assert_allclose(out["per_category_iou"], [1.0, 3 / 5, 1 / 3])
    np.testing.assert_allclose(out["per_category_accuracy"], [1.0, 3 / 4, 0.5])
    assert out["mean_iou"] == pytest.approx((1 + 3 / 5 + 1 / 3) / 3)
    assert out["overall_accuracy"] == pytest.approx(3 / 4)


def test_ignore_index_pixels_are_excluded(miou):
    # pred = 0 1   ref = 0   255      valid pixels: (0,0) pred 0 ref 0, (1,0) pred 1 ref 1 -> all correct,
    #        1 0         1   255      whatever the predictions at the two ignored pixels are.
    out = miou.compute(
        predictions=[np.array([[0, 1], [1, 0]])],
        references=[np.array([[0, 255], [1, 255]])],
        num_labels=2,
        ignore_index=255,
    )
    np.testing.assert_allclose(out["per_category_iou"], [1.0, 1.0])
    assert out["mean_iou"] == pytest.approx(1.0)
    assert out["overall_accuracy"] == pytest.approx(1.0)


def test_absent_class_is_nan_and_left_out_of_the_means(miou):
    # Same maps with num_labels = 5: class 3 and 4 appear nowhere -> IoU NaN, accuracy NaN, excluded.
    out = miou.compute(predictions=[PRED], references=[REF], num_labels=5, ignore_index=255)
    assert np.isnan(out["per_category_iou"][3]) and np.isnan(out["per_category_iou"][4])
    assert np.isnan(out["per_category_accuracy"][3])
    assert out["mean_iou"] == pytest.approx(5 / 9)
    assert out["mean_accuracy"] == pytest.approx(2 / 3)


def test_class_only_in_prediction_counts_as_zero_iou(miou):
    # pred = 0 3   ref = 0 0 (num_labels 4): class 0: I 1, U 2 -> 1/2, acc 1/2; class 3: I 0, U 1 -> IoU 0,
    # no reference pixel -> accuracy NaN; classes 1, 2 absent -> NaN. mean IoU = (1/2 + 0) / 2 = 1/4,
    # mean accuracy = 1/2 (class 3's NaN accuracy left out).
    out = miou.compute(
        predictions=[np.array([[0, 3]])], references=[np.array([[0, 0]])], num_labels=4, ignore_index=255
    )
    assert out["per_category_iou"][3] == 0.0
    assert np.isnan(out["per_category_accuracy"][3])
    assert out["mean_iou"] == pytest.approx(0.25)
    assert out["mean_accuracy"] == pytest.approx(0.5)
    zeroed = miou.compute(
        predictions=[np.array([[0, 3]])],
        references=[np.array([[0, 0]])],
        num_labels=4,
        ignore_index=255,
        nan_to_num=-1,
    )
    np.testing.assert_array_equal(zeroed["per_category_iou"], [0.5, -1, -1, 0.0])


def test_reduce_labels(miou):
    # raw ref = 0 1 2      reduced (0 -> 255, k -> k-1, 255 stays) = 255 0 1
    #           3 3 255                                               2   2 255
    # pred    = 2 0 1      valid pixels: (0,1) p0 r0 ok, (0,2) p1 r1 ok, (1,0) p2 r2 ok, (1,1) p0 r2 wrong
    #           2 0 0
    # class 0: pred (0,1),(1,1); ref (0,1)        -> I 1, U 2 -> 1/2, acc 1/1
    # class 1: pred (0,2); ref (0,2)              -> I 1, U 1 -> 1,   acc 1/1
    # class 2: pred (1,0); ref (1,0),(1,1)        -> I 1, U 2 -> 1/2, acc 1/2
    ref = np.array([[0, 1, 2], [3, 3, 255]])
    ref_before = ref.copy()
    out = miou.compute(
        predictions=[np.array([[2, 0, 1], [2, 0, 0]])],
        references=[ref],
        num_labels=3,
        ignore_index=255,
        reduce_labels=True,
    )
    np.testing.assert_allclose(out["per_category_iou"], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(out["per_category_accuracy"], [1.0, 1.0, 0.5])
    assert out["mean_iou"] == pytest.approx(2 / 3)
    assert out["mean_accuracy"] == pytest.approx(5 / 6)
    assert out["overall_accuracy"] == pytest.approx(3 / 4)
    np.testing.assert_array_equal(ref, ref_before)  # the caller's reference is not modified


def test_mean_iou_add_batch_matches_one_shot(miou):
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 4, size=(5, 7)) for _ in range(4)]
    refs = [np.where(rng.random((5, 7)) < 0.2, 255, rng.integers(0, 4, size=(5, 7))) for _ in range(4)]
    one_shot = miou.compute(predictions=preds, references=refs, num_labels=4, ignore_index=255)
    for p, r in zip(preds, refs):
        miou.add_batch(predictions=[p], references=[r])
    batched = miou.compute(num_labels=4, ignore_index=255)
    np.testing.assert_allclose(batched["per_category_iou"], one_shot["per_category_iou"])
    # independent count with plain loops over pixels
    inter, union = np.zeros(4), np.zeros(4)
    for p, r in zip(preds, refs):
        for pv, rv in zip(p.ravel(), r.ravel()):
            if rv == 255:
                continue
            for c in range(4):
                inter[c] += (pv == c) and (rv == c)
                union[c] += (pv == c) or (rv == c)
    np.testing.assert_allclose(one_shot["per_category_iou"], inter / union)


# Top-k, by hand (6 classes):
#   row 0, true 1: scores higher than 0.5: 0.9           -> rank 1 -> top1 no, top2 yes, top5 yes
#   row 1, true 0: highest                               -> rank 0 -> top1 yes
#   row 2, true 0: lowest of 6                           -> rank 5 -> top5 no
#   row 3, true 3 (0.2): higher are 0.3, 0.7, 0.6, 0.5   -> rank 4 -> top1 no, top2 no, top5 yes
# top1 = 1/4, top2 = 2/4, top5 = 3/4
SCORES = [
    [0.1, 0.5, 0.2, 0.9, 0.0, 0.3],
    [2.0, 1.0, 0.0, -1.0, -2.0, -3.0],
    [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    [0.3, 0.1, 0.7, 0.2, 0.6, 0.5],
]
TRUE = [1, 0, 0, 3]


def test_topk_hand_computed(topk):
    assert topk.compute(predictions=SCORES, references=TRUE) == pytest.approx({"top1": 0.25, "top5": 0.75})
    out = topk.compute(predictions=SCORES, references=TRUE, top_k=(1, 2, 5))
    assert out == pytest.approx({"top1": 0.25, "top2": 0.5, "top5": 0.75})


def test_topk_ties_count_against_the_sample(topk):
    # constant row: the 3 other classes score as high as the true class -> rank 3: top4 only
    out = topk.compute(predictions=[[1.0, 1.0, 1.0, 1.0]], references=[2], top_k=(1, 2, 3, 4))
    assert out == {"top1": 0.0, "top2": 0.0, "top3": 0.0, "top4": 1.0}
    # whatever the true class's index
    out = topk.compute(predictions=[[1.0, 1.0, 1.0, 1.0]] * 2, references=[0, 3], top_k=(1, 3, 4))
    assert out == {"top1": 0.0, "top3": 0.0, "top4": 1.0}
    # a tie below the true class does not matter: true 0.9, tie at 0.5
    assert topk.compute(predictions=[[0.5, 0.9, 0.5]], references=[1], top_k=(1,)) == {"top1": 1.0}
    # a tie of the true class with one other at the top: rank 1
    assert topk.compute(predictions=[[0.9, 0.9, 0.1]], references=[1], top_k=(1, 2)) == {"top1": 0.0, "top2": 1.0}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_topk_non_finite_scores_never_count_as_correct(topk, bad):
    # all-NaN / all-inf rows: a diverged model scores 0 for every k, even k = number of classes
    out = topk.compute(predictions=[[bad] * 3] * 4, references=[0, 1, 2, 0], top_k=(1, 3, 5))
    assert out == {"top1": 0.0, "top3": 0.0, "top5": 0.0}
    # one non-finite score in a row, on the true class or elsewhere: that row is wrong, the others still count
    scores = [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1]]
    scores[0][1] = bad  # on the true class
    scores[1][2] = bad  # on another class
    out = topk.compute(predictions=scores, references=[1, 0, 2, 0], top_k=(1, 3, 5))
    assert out == {"top1": 0.5, "top3": 0.5, "top5": 0.5}


def test_topk_matches_torch_topk(topk):
    import torch

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 20, generator=gen)
    labels = torch.randint(0, 20, (64,), generator=gen)
    expected = {}
    for k in (1, 5):
        hits = (torch.topk(logits, k, dim=1).indices == labels[:, None]).any(dim=1)
        expected[f"top{k}"] = hits.float().mean().item()
    out = topk.compute(predictions=logits.numpy(), references=labels.numpy())
    assert out == pytest.approx(expected)


def test_metrics_load_offline_from_the_shipped_files(monkeypatch):
    """`evaluate.load` of the shipped folder / file works offline: Hub access switched off by env and
    constants, and any socket connection made to fail."""
    import socket

    import evaluate
    import huggingface_hub

    assert set(METRIC_NAMES) == {"mean_iou", "accuracy_topk"}
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise OSError("network access attempted while loading a local metric")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(OSError):  # the guard is live
        socket.create_connection(("example.org", 80))

    miou = evaluate.load(os.path.dirname(metric_path("mean_iou")))  # a folder holding mean_iou.py
    topk = evaluate.load(metric_path("accuracy_topk"))  # the script file itself
    a = miou.compute(predictions=[PRED], references=[REF], num_labels=3, ignore_index=255)
    b = topk.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], top_k=(1, 2))
    assert a["mean_iou"] == pytest.approx(5 / 9)
    assert b == pytest.approx({"top1": 0.5, "top2": 1.0})
    # and through the package helper
    assert load_metric("mean_iou").compute(predictions=[PRED], references=[REF], num_labels=3, ignore_index=255)[
        "mean_iou"
    ] == pytest.approx(5 / 9)


def test_load_metric_rejects_unknown_names():
    with pytest.raises(ValueError):
        load_metric("accuracy")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_mean_iou_non_finite_logits_never_count_as_correct(miou, bad):
    import torch

    from paca_hf.metrics import class_predictions

    reference = np.array([[0, 1, 1], [2, 2, 0]])
    logits = torch.nn.functional.one_hot(torch.from_numpy(reference), 3).permute(2, 0, 1).float()  # perfect
    assert torch.equal(class_predictions(logits, dim=0), torch.from_numpy(reference))
    perfect = miou.compute(
        predictions=[class_predictions(logits, dim=0).numpy()], references=[reference], num_labels=3, ignore_index=255
    )
    assert perfect["mean_iou"] == 1.0
    # a diverged model: every logit non-finite -> no pixel is right
    broken = class_predictions(torch.full_like(logits, bad), dim=0)
    assert (broken == 3).all()
    out = miou.compute(predictions=[broken.numpy()], references=[reference], num_labels=3, ignore_index=255)
    assert out["mean_iou"] == 0.0 and out["overall_accuracy"] == 0.0
    # one pixel's scores broken (on the true class): only that pixel is wrong -> class 1: I 1, U 2
    logits[1, 0, 1] = bad
    out = miou.compute(
        predictions=[class_predictions(logits, dim=0).numpy()], references=[reference], num_labels=3, ignore_index=255
    )
    assert out["per_category_iou"].tolist() == [1.0, 0.5, 1.0] and out["overall_accuracy"] == pytest.approx(5 / 6)
    # float predictions with non-finite values, given directly to the function, are wrong too
    import importlib.util

    spec = importlib.util.spec_from_file_location("mean_iou_script", metric_path("mean_iou"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    direct = module.mean_iou([np.full((2, 3), bad)], [reference], num_labels=3, ignore_index=255)
    assert direct["mean_iou"] == 0.0
    with pytest.raises(ValueError, match="class ids"):
        module.mean_iou([np.full((2, 3), 0.5)], [reference], num_labels=3, ignore_index=255)


def test_finetune_evaluation_scores_a_diverged_segmentor_zero():
    """The fine-tune's evaluation (whole-image inference + mIoU) of a model whose logits are NaN in some pixels:
    those pixels are wrong, not class 0; an all-NaN model scores mIoU 0 although every reference pixel is class 0."""
    import torch
    from accelerate import Accelerator
    from transformers.modeling_outputs import SemanticSegmenterOutput

    from paca_hf.training.segmentation import recipe_image_processor
    from paca_hf.training.segmentation.evaluation import evaluate_segmentation, predict_batch

    class Diverged(torch.nn.Module):
        def __init__(self, nan_rows: int):
            super().__init__()
            self.nan_rows = nan_rows

        def forward(self, pixel_values):
            logits = torch.zeros(pixel_values.shape[0], 3, *pixel_values.shape[-2:])
            logits[:, 0] = 1.0  # class 0 everywhere ...
            logits[:, :, : self.nan_rows] = float("nan")  # ... except where the scores are NaN
            return SemanticSegmenterOutput(logits=logits)

    transform = recipe_image_processor((16, 16), reduce_labels=False)  # 16 x 16 images stay 16 x 16
    image, labels = torch.zeros(3, 16, 16, dtype=torch.uint8), torch.zeros(16, 16, dtype=torch.long)
    prediction = predict_batch(Diverged(nan_rows=4), [image], transform, "cpu")[0]
    assert (prediction[:4] == 3).all() and (prediction[4:] == 0).all()

    batches = [{"images": [image], "labels": [labels]}]
    for nan_rows, expected in ((0, 1.0), (4, 12 / 16), (16, 0.0)):
        results, _ = evaluate_segmentation(Diverged(nan_rows), batches, Accelerator(cpu=True), transform, 3, False)
        assert results["mean_iou"] == pytest.approx(expected)
