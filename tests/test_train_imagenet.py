"""ImageNet training recipe: augmentation (Mixup / CutMix, RandAugment, random erasing, crops), the soft-target loss,
the recipe's defaults, and a few Trainer steps of scripts/train_imagenet.py followed by scripts/evaluate_imagenet.py
on a tiny image folder."""

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paca_hf import PaCaViTConfig, PaCaViTForImageClassification, PaCaViTImageProcessor
from paca_hf.imagenet_augment import (
    RAND_INCREASING_TRANSFORMS,
    ImageNetTrainTransform,
    Mixup,
    RandAugment,
    RandomErasing,
    RandomResizedCrop,
    rand_augment_transform,
    smoothed_one_hot,
    soft_target_cross_entropy,
)


ROOT = Path(__file__).resolve().parent.parent
TINY = dict(
    model_type="pacavit",
    depths=[1, 1, 1, 1],
    hidden_sizes=[16, 32, 48, 64],
    num_attention_heads=[1, 1, 2, 2],
    num_clusters=[4, 4, 4, 0],
    num_labels=3,
)
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]


def _load_script(name):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _hand_one_hot(labels, num_classes, smoothing):
    out = np.full((len(labels), num_classes), smoothing / num_classes)
    for row, label in enumerate(labels):
        out[row, label] = 1 - smoothing + smoothing / num_classes
    return out


# ------------------------------------------------------------------------------------------------ Mixup / CutMix


def test_mixup_matches_hand_computed_lambda_mixing():
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1])
    mixup = Mixup(num_classes=3, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    mixed, targets = mixup(x, labels, rng=random.Random(5))

    hand = random.Random(5)
    assert hand.random() < 1.0  # the "mix this batch at all" draw (prob 1)
    lam = hand.betavariate(0.8, 0.8)
    assert mixup.last_params == {"lam": lam, "use_cutmix": False, "bbox": None}
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    expected = lam * _hand_one_hot([0, 1, 2, 1], 3, 0.1) + (1 - lam) * _hand_one_hot([1, 2, 1, 0], 3, 0.1)
    np.testing.assert_allclose(targets.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(targets.sum(1).numpy(), 1.0, atol=1e-6)
    assert torch.equal(x, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)))  # input untouched


def test_cutmix_matches_hand_computed_box_and_corrected_lambda():
    height, width = 10, 12
    x = torch.randn(5, 3, height, width, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([2, 0, 1, 1, 0])
    mixup = Mixup(num_classes=3, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(20):
        mixed, targets = mixup(x, labels, rng=random.Random(seed))
        hand = random.Random(seed)
        hand.random()
        lam0 = hand.betavariate(1.0, 1.0)
        cut_h, cut_w = int(height * math.sqrt(1 - lam0)), int(width * math.sqrt(1 - lam0))
        cy, cx = hand.randrange(height), hand.randrange(width)
        y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
        x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
        lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)
        assert mixup.last_params["use_cutmix"] and mixup.last_params["bbox"] == (y0, y1, x0, x1)
        assert mixup.last_params["lam"] == pytest.approx(lam)
        inside = torch.zeros(height, width, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(mixed[..., inside], x.flip(0)[..., inside])
        assert torch.equal(mixed[..., ~inside], x[..., ~inside])
        expected = lam * _hand_one_hot(labels.tolist(), 3, 0) + (1 - lam) * _hand_one_hot(labels.flip(0).tolist(), 3, 0)
        np.testing.assert_allclose(targets.numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(targets.sum(1).numpy(), 1.0, atol=1e-6)


def test_recipe_mixup_switches_between_mixup_and_cutmix_and_keeps_targets_normalised():
    x = torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    mixup = Mixup(num_classes=5)  # the recipe: 0.8 / 1.0, prob 1, switch 0.5, smoothing 0.1
    modes = []
    for seed in range(40):
        mixed, targets = mixup(x, labels, rng=random.Random(seed))
        modes.append(mixup.last_params["use_cutmix"])
        assert mixed.shape == x.shape and targets.shape == (6, 5) and targets.dtype == torch.float32
        np.testing.assert_allclose(targets.sum(1).numpy(), 1.0, atol=1e-6)
        assert targets.min() >= 0.1 / 5 - 1e-7
    assert 5 < sum(modes) < 35  # both methods are drawn, about half each
    # prob 0: nothing mixed, targets are the smoothed one-hot rows
    mixed, targets = Mixup(num_classes=5, prob=0.0)(x, labels, rng=random.Random(0))
    assert torch.equal(mixed, x)
    torch.testing.assert_close(targets, smoothed_one_hot(labels, 5, 0.1))


# ------------------------------------------------------------------------------------------------ loss


def test_soft_target_loss_equals_hand_computed_cross_entropy():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3
    targets = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), dim=1)
    z = logits.numpy()
    log_probs = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    hand = float(np.mean(-(targets.numpy() * log_probs).sum(1)))
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx(hand, rel=1e-6)
    labels = torch.tensor([0, 4, 2, 2])
    # one-hot rows give the plain cross-entropy, smoothed rows PyTorch's label smoothing (timm's smoothing loss)
    assert soft_target_cross_entropy(logits, smoothed_one_hot(labels, 5, 0.0)).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
    assert soft_target_cross_entropy(logits, smoothed_one_hot(labels, 5, 0.1)).item() == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6
    )


def test_trainer_loss_uses_mixup_in_training_and_plain_cross_entropy_in_evaluation(tmp_path):
    train = _load_script("train_imagenet")
    torch.manual_seed(0)
    config = PaCaViTConfig(**{k: v for k, v in TINY.items() if k != "model_type"}, drop_path_rate=0.0)
    model = PaCaViTForImageClassification(config)
    args = train.PaCaTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, eval_strategy="no"
    )
    trainer = train.PaCaTrainer(
        model=model, args=args, mixup=Mixup(num_classes=3), label_smoothing=0.1, mixup_seed=11
    )
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2, 1, 2])

    model.train()
    loss = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels})
    mixed, targets = Mixup(num_classes=3)(pixel_values, labels, rng=random.Random(11))
    log_probs = torch.log_softmax(model(pixel_values=mixed).logits, dim=1)
    torch.testing.assert_close(loss, -(targets * log_probs).sum(1).mean())

    model.eval()
    loss, outputs = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels}, return_outputs=True)
    torch.testing.assert_close(loss, F.cross_entropy(model(pixel_values=pixel_values).logits, labels))
    assert outputs.logits.shape == (4, 3)

    # timm's weight-decay groups: matrices and kernels decay; biases and norm weights (1-d) do not
    decay = set(trainer.get_decay_parameter_names(model))
    for name, param in model.named_parameters():
        assert (name in decay) == (param.ndim > 1 and not name.endswith(".bias")), name
    assert "classifier.weight" in decay and "classifier.bias" not in decay


# ------------------------------------------------------------------------------------------------ image augmentation


def test_rand_augment_keeps_shape_and_dtype():
    rand_aug = rand_augment_transform("rand-m9-mstd0.5-inc1")
    assert (rand_aug.num_layers, rand_aug.magnitude, rand_aug.magnitude_std, rand_aug.prob) == (2, 9.0, 0.5, 0.5)
    assert rand_aug.op_names == RAND_INCREASING_TRANSFORMS and rand_aug.fill == (124, 116, 104)
    array = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    changed = 0
    for seed in range(12):
        out = rand_aug(image, rng=random.Random(seed))
        assert out.size == (40, 30) and out.mode == "RGB"
        changed += not np.array_equal(np.asarray(out), array)
        again = rand_aug(image, rng=random.Random(seed))
        assert np.array_equal(np.asarray(out), np.asarray(again))  # a seed fixes the result
    assert changed > 0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    out = rand_aug(tensor, rng=random.Random(1))
    assert out.shape == (3, 30, 40) and out.dtype == torch.uint8
    out = rand_aug(tensor.float() / 255, rng=random.Random(1))
    assert out.shape == (3, 30, 40) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    # every op on its own, at the top magnitude, keeps size and mode
    for name in RAND_INCREASING_TRANSFORMS + ("Posterize", "Solarize", "Color"):
        single = RandAugment(num_layers=1, magnitude=10, magnitude_std=0, prob=1.0, ops=[name])
        out = single(image, rng=random.Random(0))
        assert out.size == image.size and out.mode == "RGB", name
    with pytest.raises(ValueError):
        rand_augment_transform("augmix-m5")


def test_random_erasing_erases_a_rectangle_of_the_expected_area():
    erasing = RandomErasing(probability=1.0, mode="pixel")
    fractions = []
    for seed in range(60):
        image = torch.full((3, 64, 64), 100.0)
        out = erasing(image, rng=random.Random(seed))
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
        mask = (out != 100.0).any(0)
        rows, cols = torch.where(mask)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and (out[:, mask] != 100.0).all()  # one filled rectangle, every channel
        fractions.append(mask.float().mean().item())
        assert out[:, mask].abs().max() < 10  # N(0, 1) noise
    # target area uniform in [0.02, 1/3] of the image; h and w are rounded, hence the small margins
    assert min(fractions) >= 0.015 and max(fractions) <= 0.35
    assert np.mean(fractions) == pytest.approx((0.02 + 1 / 3) / 2, abs=0.06)
    # the recipe's probability 0.25
    erased = sum(
        bool((RandomErasing(0.25)(torch.full((3, 32, 32), 100.0), rng=random.Random(s)) != 100.0).any())
        for s in range(200)
    )
    assert 25 <= erased <= 80
    untouched = torch.full((2, 3, 16, 16), 100.0)
    assert torch.equal(RandomErasing(0.0)(untouched.clone()), untouched)


def test_random_resized_crop_and_full_train_transform():
    crop = RandomResizedCrop(24, scale=(0.08, 1.0))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    for seed in range(20):
        top, left, h, w = crop.get_params(64, 48, random.Random(seed))
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.08 * 48 * 64 * 0.7 <= h * w <= 48 * 64
        assert crop(image, random.Random(seed)).size == (24, 24)
    # a long thin image cannot fit the aspect ratios at large scale: the fallback is a central crop
    assert RandomResizedCrop(8, scale=(1.0, 1.0)).get_params(100, 10, random.Random(0)) == (0, 43, 10, 13)
    transform = ImageNetTrainTransform(image_size=32)
    out = transform(image.convert("L"), rng=random.Random(0))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ the scripts


def test_recipe_defaults():
    train = _load_script("train_imagenet")
    model_args, data_args, aug_args, args = train.parse_args(["--config_name", "pacavit_base_p2cconv_100_0"])
    assert data_args.dataset_name == "imagenet-1k"
    assert (args.weight_decay, args.num_train_epochs, args.label_smoothing_factor) == (0.05, 300.0, 0.1)
    assert args.per_device_train_batch_size == 128 and args.learning_rate is None and not args.remove_unused_columns
    assert (aug_args.mixup, aug_args.cutmix, aug_args.mixup_prob, aug_args.mixup_switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert (aug_args.auto_augment, aug_args.reprob, aug_args.remode) == ("rand-m9-mstd0.5-inc1", 0.25, "pixel")
    assert (aug_args.scale, aug_args.interpolation, aug_args.hflip) == ([0.08, 1.0], "bicubic", 0.5)
    global_batch = train.apply_recipe(args, num_train_examples=1281167)
    assert global_batch == 128 * args.world_size
    assert args.learning_rate == pytest.approx(5e-4 * global_batch / 512)
    assert args.lr_scheduler_type == "cosine_warmup_with_min_lr"
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.01, "warmup_lr_rate": 0.001}
    assert args.warmup_steps == 5 * math.ceil(1281167 / global_batch)
    if not torch.cuda.is_available():
        assert args.mixed_precision == "no" and not args.bf16 and not args.fp16
    names = ["a", "b"]
    config = train.build_config(model_args, names, 224)
    assert config.drop_path_rate == 0.5 and config.id2label == {0: "a", 1: "b"}  # PaCa-Base's stochastic depth
    assert config.problem_type == "single_label_classification"
    # an explicit learning rate and warm-up win
    _, _, _, args = train.parse_args(["--config_name", "x", "--learning_rate", "0.01", "--warmup_steps", "7"])
    train.apply_recipe(args, num_train_examples=1000)
    assert (args.learning_rate, args.warmup_steps) == (0.01, 7)


def _image_folder(root: Path, classes=range(3), per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    for index in classes:
        folder = root / f"class{index}"
        folder.mkdir(parents=True)
        for image_index in range(per_class):
            noise = rng.integers(-40, 40, (48, 48, 3))
            pixels = np.clip(np.array(COLOURS[index]) + noise, 0, 255).astype(np.uint8)
            pixels[: 8 * (index + 1), :8] = 255  # a class-dependent white patch
            Image.fromarray(pixels).save(folder / f"{image_index}.png")


def _direct_top1(model_dir: Path, folder: Path) -> float:
    model = PaCaViTForImageClassification.from_pretrained(model_dir).eval()
    processor = PaCaViTImageProcessor.from_pretrained(model_dir)
    correct = total = 0
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = model.config.label2id[class_dir.name]
        for path in sorted(class_dir.glob("*.png")):
            with torch.no_grad():
                logits = model(**processor(Image.open(path), return_tensors="pt")).logits
            correct += int(logits.argmax(-1).item() == label)
            total += 1
    return correct / total


def test_train_script_then_evaluate_script_on_a_tiny_folder(tmp_path, capsys):
    train = _load_script("train_imagenet")
    evaluate_script = _load_script("evaluate_imagenet")
    _image_folder(tmp_path / "train")
    _image_folder(tmp_path / "val", seed=1)
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    metrics = train.main([
        "--config_name", str(config_path), "--train_dir", str(tmp_path / "train"),
        "--validation_dir", str(tmp_path / "val"), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
        "--image_size", "32", "--max_steps", "3", "--per_device_train_batch_size", "6",
        "--per_device_eval_batch_size", "9", "--learning_rate", "2e-3", "--warmup_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0",
        "--logging_steps", "1", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
    ])  # fmt: skip
    assert {"eval_top1", "eval_top5", "eval_loss"} <= set(metrics)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "all_results.json",
                 "train_results.json", "eval_results.json"):  # fmt: skip
        assert (out / name).is_file(), name
    results = json.loads((out / "eval_results.json").read_text())
    assert 0 <= results["eval_top1"] <= 1 and results["eval_top5"] == 1.0  # 3 classes: top-5 is always right
    assert "train_loss" in json.loads((out / "all_results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "class0", "1": "class1", "2": "class2"}
    assert config["problem_type"] == "single_label_classification"
    processor = PaCaViTImageProcessor.from_pretrained(out)
    assert processor.crop_size.height == 32 and processor.size.shortest_edge == 32
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and all(math.isfinite(log.get("loss", 0)) for log in state["log_history"])

    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert evaluate_script.main([
        "--model", str(out), "--validation_dir", str(tmp_path / "val"), "--batch_size", "5", "--num_workers", "0",
        "--output", str(report), "--cache_dir", str(tmp_path / "cache"),
    ]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    scored = json.loads(report.read_text())
    direct = _direct_top1(out, tmp_path / "val")
    assert scored["num_samples"] == 18 and scored["label_mapping"] == "names"
    assert scored["top1"] == pytest.approx(direct) and scored["top5"] == 1.0
    assert f"top-1 {100 * direct:.2f}%" in printed
    assert scored["top1"] == pytest.approx(results["eval_top1"])  # the Trainer's evaluation saw the same images

    # a folder with only some of the classes is mapped by name, not by position
    _image_folder(tmp_path / "val_subset", classes=[1, 2], per_class=3, seed=2)
    evaluate_script.main([
        "--model", str(out), "--validation_dir", str(tmp_path / "val_subset"), "--num_workers", "0",
        "--output", str(report), "--cache_dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    scored = json.loads(report.read_text())
    assert scored["num_samples"] == 6 and scored["label_mapping"] == "names"
    assert scored["top1"] == pytest.approx(_direct_top1(out, tmp_path / "val_subset"))
    with pytest.raises(ValueError, match="cannot be mapped"):
        evaluate_script.main([
            "--model", str(out), "--validation_dir", str(tmp_path / "val_subset"), "--num_workers", "0",
            "--label_mapping", "sorted", "--cache_dir", str(tmp_path / "cache"),
        ])  # fmt: skip
