"""ImageNet training recipe (paca_hf.training.classification.train): timm's transform and Mixup in the Trainer, the
soft-target loss, the recipe's defaults, exact resume, and a few Trainer steps followed by the image-folder evaluation
of scripts/evaluate_imagenet.py on a tiny image folder."""

import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
import torch.nn.functional as F
from finetune_helpers import assert_normal_permissions
from PIL import Image
from safetensors.torch import load_file
from tiny_configs import tiny_config

from paca_hf import PaCaViTForImageClassification, PaCaViTImageProcessor
from paca_hf.training.classification import arguments as imagenet_args
from paca_hf.training.classification import evaluation as imagenet_evaluation
from paca_hf.training.classification import train as imagenet


ROOT = Path(__file__).resolve().parents[2]
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ augmentation


def test_train_transform_is_timms_create_transform_seeded_per_sample():
    """One augmented batch of ImageNetTrainDataset equals timm's create_transform called directly with the recipe's
    settings, each sample under the seed SeedSequence([seed, epoch, index]) (hand-derived here)."""
    _, _, aug_args, _ = imagenet_args.parse_args(["--config_name", "x"])
    transform = imagenet.train_transform(aug_args, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    names = [type(t).__name__ for t in transform.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert names[-1] == "RandomErasing"
    timm_transform = timm.data.create_transform(
        input_size=32, is_training=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
        auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), re_prob=0.25, re_mode="pixel", re_count=1,
    )  # fmt: skip

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)) for i in range(6)]
    rows = {"image": images, "label": [0, 1, 2, 0, 1, 2]}

    class Rows:
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            return {key: values[index] for key, values in rows.items()}

    dataset = imagenet.ImageNetTrainDataset(Rows(), transform, seed=7)
    dataset.set_epoch(3)
    _seed_everything(123)
    before = random.random(), np.random.rand(), torch.rand(1).item()
    _seed_everything(123)
    batch = imagenet_evaluation.collate_fn([dataset[index] for index in range(6)])
    # the caller's generators are untouched
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before
    assert batch["pixel_values"].shape == (6, 3, 32, 32) and batch["labels"].tolist() == rows["label"]

    expected = []
    for index, image in enumerate(images):
        seed = int(np.random.SeedSequence([7, 3, index]).generate_state(1)[0])
        _seed_everything(seed)
        expected.append(timm_transform(image.convert("RGB")))
    torch.testing.assert_close(batch["pixel_values"], torch.stack(expected), rtol=0, atol=0)
    # another epoch augments differently, the same epoch identically
    dataset.set_epoch(4)
    assert not torch.equal(dataset[0]["pixel_values"], batch["pixel_values"][0])
    dataset.set_epoch(3)
    assert torch.equal(dataset[0]["pixel_values"], batch["pixel_values"][0])


def _epochs_seen(tmp_path, monkeypatch, rank=0, num_processes=1, **loader_args):
    """`(epoch, index)` of every sample that `ImageNetTrainDataset` augments in 2 epochs of `PaCaTrainer` on 4
    images, 2 per batch, as process `rank` of `num_processes` sees them: accelerate shards the data loader of that
    process exactly as in a distributed run (`prepare_data_loader` with those numbers; everything else is one
    process). `loader_args`: more `TrainingArguments` (`dataloader_*`); samples are recorded in a file, so that
    DataLoader worker processes record theirs too."""
    import accelerate.accelerator

    prepare = accelerate.accelerator.prepare_data_loader

    def as_one_of_several(data_loader, *args, **kwargs):
        return prepare(data_loader, *args, **{**kwargs, "num_processes": num_processes, "process_index": rank})

    record = tmp_path / f"seen-{rank}-of-{num_processes}-{len(loader_args)}.txt"

    class Recording(imagenet.ImageNetTrainDataset):
        def __getitem__(self, index):
            with open(record, "a") as file:
                file.write(f"{self.epoch} {index}\n")
            return super().__getitem__(index)

    rows = [{"image": Image.new("RGB", (40, 40), COLOURS[i % 3]), "label": i % 3} for i in range(4)]
    _, _, aug_args, _ = imagenet_args.parse_args(["--config_name", "x"])
    transform = imagenet.train_transform(aug_args, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    args = imagenet_args.PaCaTrainingArguments(
        output_dir=str(tmp_path / f"rank{rank}of{num_processes}"), use_cpu=True, report_to="none",
        learning_rate=1e-3, lr_scheduler_type="constant", num_train_epochs=2, per_device_train_batch_size=2,
        eval_strategy="no", save_strategy="no", disable_tqdm=True, **{"dataloader_num_workers": 0, **loader_args},
    )  # fmt: skip
    trainer = imagenet.PaCaTrainer(
        model=PaCaViTForImageClassification(tiny_config(num_labels=3)), args=args,
        train_dataset=Recording(rows, transform, seed=3), data_collator=imagenet_evaluation.collate_fn,
    )  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(accelerate.accelerator, "prepare_data_loader", as_one_of_several)
        trainer.train()
    return [tuple(map(int, line.split())) for line in record.read_text().splitlines()]


def test_every_process_of_a_distributed_run_augments_each_epoch_afresh(tmp_path, monkeypatch):
    """Each sample's augmentation is seeded from its epoch in each process of a two-process run too (where
    accelerate's sharded loader does not pass the epoch on to the dataset, as it does in one process): epoch 1
    augments with epoch 1's seed, and the two processes together augment every image once per epoch."""
    ranks = [_epochs_seen(tmp_path, monkeypatch, rank, 2) for rank in (0, 1)]
    for seen in ranks:
        assert [epoch for epoch, _ in seen] == [0, 0, 1, 1], seen
    assert sorted(ranks[0] + ranks[1]) == [(epoch, index) for epoch in (0, 1) for index in range(4)]


def test_persistent_data_loader_workers_augment_each_epoch_afresh(tmp_path, monkeypatch):
    """`--dataloader_persistent_workers`: the worker process keeps its copy of the dataset from epoch to epoch, and
    still augments epoch 1 with epoch 1's seed."""
    seen = _epochs_seen(tmp_path, monkeypatch, dataloader_num_workers=1, dataloader_persistent_workers=True)
    assert [epoch for epoch, _ in seen] == [0] * 4 + [1] * 4, seen


# ------------------------------------------------------------------------------------------------ loss


def test_trainer_loss_uses_timm_mixup_in_training_and_plain_cross_entropy_in_evaluation(tmp_path):
    torch.manual_seed(0)
    model = PaCaViTForImageClassification(tiny_config(num_labels=3))
    args = imagenet_args.PaCaTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, eval_strategy="no"
    )
    _, _, aug_args, _ = imagenet_args.parse_args(["--config_name", "x"])
    mixup = imagenet.build_mixup(aug_args, num_classes=3, label_smoothing=0.1)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert (mixup.mode, mixup.label_smoothing, mixup.num_classes) == ("batch", 0.1, 3)
    trainer = imagenet.PaCaTrainer(model=model, args=args, mixup=mixup, label_smoothing=0.1)
    pixel_values = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2, 1, 2, 1])

    model.train()
    for seed in range(4):  # both Mixup and CutMix get drawn
        np.random.seed(seed)
        loss = trainer.compute_loss(model, {"pixel_values": pixel_values.clone(), "labels": labels})
        np.random.seed(seed)
        # timm called directly; the odd fifth image is left out of the step
        mixed, targets = timm.data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=3)(
            pixel_values[:4].clone(), labels[:4]
        )
        assert not torch.allclose(targets, F.one_hot(labels[:4], 3).float())
        log_probs = torch.log_softmax(model(pixel_values=mixed).logits, dim=1)
        torch.testing.assert_close(loss, -(targets * log_probs).sum(1).mean())
    with pytest.raises(ValueError, match="at least two images"):
        trainer.compute_loss(model, {"pixel_values": pixel_values[:1], "labels": labels[:1]})

    model.eval()
    loss, outputs = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels}, return_outputs=True)
    torch.testing.assert_close(loss, F.cross_entropy(model(pixel_values=pixel_values).logits, labels))
    assert outputs.logits.shape == (5, 3)

    # timm's weight-decay groups: matrices and kernels decay; biases and norm weights (1-d) do not
    decay = set(trainer.get_decay_parameter_names(model))
    for name, param in model.named_parameters():
        assert (name in decay) == (param.ndim > 1 and not name.endswith(".bias")), name
    assert "classifier.weight" in decay and "classifier.bias" not in decay


# ------------------------------------------------------------------------------------------------ the scripts


def test_recipe_defaults():
    train = imagenet
    parse_args = imagenet_args.parse_args
    model_args, data_args, aug_args, args = parse_args(["--config_name", "pacavit_base_p2cconv_100_0"])
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
    _, _, _, args = parse_args(["--config_name", "x", "--learning_rate", "0.01", "--warmup_steps", "7"])
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


def _train_argv(tmp_path, out, *extra):
    return [
        "--config_name", str(tmp_path / "tiny.json"), "--train_dir", str(tmp_path / "train"),
        "--validation_dir", str(tmp_path / "val"), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
        "--image_size", "32", "--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "9",
        "--learning_rate", "2e-3", "--warmup_steps", "1", "--eval_strategy", "no", "--dataloader_num_workers", "0",
        "--logging_steps", "1", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def _tiny_folders(tmp_path):
    _image_folder(tmp_path / "train")
    _image_folder(tmp_path / "val", seed=1)
    tiny_config(num_labels=3).to_json_file(tmp_path / "tiny.json")


def _run(argv):
    return imagenet.train_and_evaluate(*imagenet_args.parse_args(argv))


def test_train_then_evaluate_on_a_tiny_folder(tmp_path):
    _tiny_folders(tmp_path)
    out = tmp_path / "out"
    metrics = _run(_train_argv(tmp_path, out, "--max_steps", "3", "--save_strategy", "no"))
    assert {"eval_top1", "eval_top5", "eval_loss"} <= set(metrics)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "all_results.json",
                 "train_results.json", "eval_results.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert_normal_permissions(out)
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

    # scripts/evaluate_imagenet.py as a command (its printed line and JSON file)
    report = tmp_path / "eval.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate_imagenet.py"), "--model", str(out), "--validation_dir",
         str(tmp_path / "val"), "--batch_size", "5", "--num_workers", "0", "--output", str(report),
         "--cache_dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1"), timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    scored = json.loads(report.read_text())
    direct = _direct_top1(out, tmp_path / "val")
    assert scored["num_samples"] == 18 and scored["label_mapping"] == "names"
    assert scored["top1"] == pytest.approx(direct) and scored["top5"] == 1.0
    assert f"top-1 {100 * direct:.2f}%" in completed.stdout
    assert scored["top1"] == pytest.approx(results["eval_top1"])  # the Trainer's evaluation saw the same images

    # a folder with only some of the classes is mapped by name, not by position
    _image_folder(tmp_path / "val_subset", classes=[1, 2], per_class=3, seed=2)
    scored = imagenet_evaluation.evaluate_image_folder(
        str(out), str(tmp_path / "val_subset"), cache_dir=str(tmp_path / "cache")
    )
    assert scored["num_samples"] == 6 and scored["label_mapping"] == "names"
    assert scored["top1"] == pytest.approx(_direct_top1(out, tmp_path / "val_subset"))
    with pytest.raises(ValueError, match="cannot be mapped"):
        imagenet_evaluation.evaluate_image_folder(
            str(out), str(tmp_path / "val_subset"), label_mapping="sorted", cache_dir=str(tmp_path / "cache")
        )

    # a diverged model (NaN weights, so NaN scores) scores 0, not 1
    diverged = PaCaViTForImageClassification.from_pretrained(out)
    with torch.no_grad():
        diverged.classifier.weight.fill_(float("nan"))
    diverged.save_pretrained(tmp_path / "diverged")
    PaCaViTImageProcessor.from_pretrained(out).save_pretrained(tmp_path / "diverged")
    scored = imagenet_evaluation.evaluate_image_folder(str(tmp_path / "diverged"), str(tmp_path / "val_subset"))
    assert scored["top1"] == scored["top5"] == 0.0


def test_the_script_prints_its_recipe_line_and_warns_of_a_run_that_is_all_warm_up(tmp_path):
    """scripts/train_imagenet.py with the default log level prints the recipe line the README promises, and a 1-epoch
    run under the default 5 warm-up epochs says which learning rate it peaks at: 18 images, 6 per step, so 3 steps
    against 15 warm-up steps; the default rate 5e-4 x 6 / 512 ramps from x 0.001 by 0.999 / 14 per step, to
    x (0.001 + 0.999 x 2 / 14) at the last step (step 2)."""
    _tiny_folders(tmp_path)
    argv = _train_argv(
        tmp_path, tmp_path / "out", "--num_train_epochs", "1", "--save_strategy", "no", "--do_eval", "false"
    )
    argv.remove("--learning_rate"), argv.remove("2e-3"), argv.remove("--warmup_steps"), argv.remove("1")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_imagenet.py"), *argv], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"), timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    learning_rate = 5e-4 * 6 / 512
    peak = learning_rate * (0.001 + 0.999 * 2 / 14)
    lines = completed.stdout.splitlines()
    assert [line for line in lines if "global batch" in line][0].endswith(
        f"global batch 6, learning rate {learning_rate:.3g}, warm-up 15 steps, scheduler cosine_warmup_with_min_lr "
        f"{imagenet.RECIPE_SCHEDULER_KWARGS}, mixed precision no, drop path 0.0, 3 classes"
    )
    warnings = [line for line in lines if "warm-up" in line and "WARNING" in line]
    assert len(warnings) == 1 and f"peaks at {peak:.3g}" in warnings[0] and "15 steps" in warnings[0], lines
    assert "3 steps" in warnings[0]


def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path):
    """4 steps straight vs 2 steps, a checkpoint, and a resume for steps 3-4: identical weights (Mixup / CutMix,
    RandAugment, random erasing and stochastic depth all replay exactly)."""
    _tiny_folders(tmp_path)
    tiny_config(num_labels=3, drop_path_rate=0.2).to_json_file(tmp_path / "tiny.json")
    common = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--do_eval", "false")
    _run(_train_argv(tmp_path, tmp_path / "straight", *common))
    _run(_train_argv(tmp_path, tmp_path / "resumed", *common))  # the same run, to be resumed from its step 2
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    (tmp_path / "resumed" / "model.safetensors").unlink()
    _run(_train_argv(tmp_path, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(checkpoint)))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    # and the run did change the weights (the comparison is not vacuous)
    initial = load_file(checkpoint / "model.safetensors")
    assert any(not torch.equal(initial[name], straight[name]) for name in straight)


class SimulatedKill(BaseException):
    """Stands for the process being killed: not an Exception, so nothing in the run handles it."""


def test_resume_skips_a_checkpoint_half_written_when_killed(tmp_path, monkeypatch, caplog):
    """A run killed while Trainer saved checkpoint-4 (model file half written, no optimizer, no trainer state):
    `--resume_from_checkpoint true` resumes from checkpoint-2 instead, says so, and ends with the weights of the
    uninterrupted run; naming checkpoint-4 explicitly is an error that names it. Every checkpoint Trainer completes
    carries the COMPLETE marker (every file's size and sha256)."""
    from transformers import Trainer

    from paca_hf.training.checkpoint import verify_checkpoint
    from paca_hf.training.errors import CheckpointError

    _tiny_folders(tmp_path)
    common = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--do_eval", "false")
    _run(_train_argv(tmp_path, tmp_path / "straight", *common))
    assert verify_checkpoint(tmp_path / "straight" / "checkpoint-4")["step"] == 4

    out = tmp_path / "killed"
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def killed_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            model_file = Path(output_dir) / "model.safetensors"
            model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
            raise SimulatedKill
        return save_optimizer(self, output_dir)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_optimizer_and_scheduler", killed_at_step_4)
        with pytest.raises(SimulatedKill):
            _run(_train_argv(tmp_path, out, *common))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    with pytest.raises(CheckpointError, match="checkpoint-4.*incomplete"):
        _run(_train_argv(tmp_path, out, *common, "--resume_from_checkpoint", str(out / "checkpoint-4")))
    assert not (out / "model.safetensors").exists()
    only_broken = tmp_path / "only_broken"
    shutil.copytree(out / "checkpoint-4", only_broken / "checkpoint-4")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        imagenet.resolve_trainer_checkpoint("true", only_broken)
    assert imagenet.resolve_trainer_checkpoint("true", tmp_path / "no_run_yet") is None  # a first start
    assert imagenet.resolve_trainer_checkpoint("false", out) is None

    caplog.set_level(logging.INFO, logger="paca_hf")
    _run(_train_argv(tmp_path, out, *common, "--resume_from_checkpoint", "true"))
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0], caplog.text
    assert any("checkpoint-2" in r.getMessage() and "Resuming" in r.getMessage() for r in caplog.records)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(out / "model.safetensors")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    assert verify_checkpoint(out / "checkpoint-4")["step"] == 4  # saved again, completely this time


def test_save_total_limit_keeps_the_last_complete_checkpoint_until_the_new_one_is(tmp_path, monkeypatch):
    """`--save_total_limit 1`, killed while marking checkpoint-2 complete: checkpoint-1 is still there (Trainer's own
    rotation deletes it before the new checkpoint could be marked) and is what `true` resumes from."""
    _tiny_folders(tmp_path)
    out = tmp_path / "out"
    argv = _train_argv(
        tmp_path,
        out,
        "--max_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--save_total_limit",
        "1",
        "--do_eval",
        "false",
    )
    mark = imagenet.write_complete_marker

    def killed_marking_step_2(folder, info):
        if info["step"] == 2:
            raise SimulatedKill
        return mark(folder, info)

    with monkeypatch.context() as patch:
        patch.setattr(imagenet, "write_complete_marker", killed_marking_step_2)
        with pytest.raises(SimulatedKill):
            _run(argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert imagenet.resolve_trainer_checkpoint("true", out) == str(out / "checkpoint-1")
    _run(argv)  # a complete checkpoint-2 (the run starts afresh) replaces checkpoint-1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_the_package_and_the_model_do_not_import_timm():
    """timm is the training extra's: `import paca_hf`, the model, `paca_hf.training` and the ImageNet arguments and
    evaluation (scripts/evaluate_imagenet.py) work without it."""
    code = (
        "import sys; import paca_hf, paca_hf.training; from paca_hf import PaCaViTForImageClassification; "
        "import paca_hf.training.classification.arguments, paca_hf.training.classification.evaluation; "
        "from tiny_configs import tiny_config; PaCaViTForImageClassification(tiny_config()); "
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'timm'))"
    )
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=path),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "[]"
