"""Both training scripts on two "machines": `accelerate launch --multi_gpu --num_machines 2 --machine_rank {0,1}`,
one process each, both on loopback, gloo on the CPU, one shared output folder. Every process records the files it
writes (tests/record_writes.py); the runs must end with the same weights on both ranks, write every shared file
once (from the global main process, rank 0), and resume from their own checkpoints."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from finetune_helpers import finetune_argv, free_port
from tiny_configs import tiny_config

from paca_hf import PaCaViTForImageClassification, PaCaViTForSemanticSegmentation
from paca_hf import training as T
from paca_hf.training import distributed, runner
from paca_hf.training.classification.arguments import parse_args as imagenet_parse_args
from paca_hf.training.errors import TrainingError
from paca_hf.training.segmentation import finetune


ROOT = Path(__file__).resolve().parents[2]
RECORDER = ROOT / "tests" / "record_writes.py"
TIMEOUT_S = 150

# Files that accelerate and Trainer write from every process, each under its own global process index (and the
# temporary files of their atomic writes, `.rank_1.json.tmp-XXXX`).
PER_PROCESS = re.compile(r"(random_states_|rng_state_|rank_)(\d+)\.(pkl|pth|json)")


def _env(records: Path) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=str(ROOT / "src"),
        PACA_RECORD_WRITES=str(records),
    )
    for name in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def launch(script: Path, args, records: Path, machines=(0, 1), multi_gpu=True) -> list[tuple[int, str]]:
    """`accelerate launch` of `script` (through the write recorder) once per machine rank, on loopback; returns
    `(exit status, output)` per machine. Every launch is killed (with its process group) after TIMEOUT_S."""
    port = free_port()
    procs = []
    for rank in machines:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            *(["--multi_gpu"] if multi_gpu else []),
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(RECORDER),
            str(script),
            *map(str, args),
        ]
        procs.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_env(records),
                cwd=ROOT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + TIMEOUT_S
    results = []
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"a launch did not finish within {TIMEOUT_S} s:\n{output[-3000:]}")
        results.append((proc.returncode, output))
    return results


def writers(records: Path, output_dir: Path) -> dict[str, set[str]]:
    """`{path relative to output_dir: {ranks that wrote, renamed onto or removed it}}` from the recorder's files."""
    out = defaultdict(set)
    root = str(output_dir.resolve())
    for file in records.glob("writes_*.tsv"):
        for line in file.read_text().splitlines():
            rank, event, path = line.split("\t")
            if path.startswith(root + os.sep) and event != "rename_from":
                out[os.path.relpath(path, root)].add(rank)
    return out


def assert_single_writers(written: dict[str, set[str]]) -> None:
    """Every file has one writer: the process whose index it names for per-process files, else rank 0."""
    wrong = {}
    for path, ranks in written.items():
        per_process = PER_PROCESS.search(path)
        expected = {per_process.group(2)} if per_process else {"0"}
        if ranks != expected:
            wrong[path] = sorted(ranks)
    assert not wrong, f"files written by other processes than expected: {wrong}"


def _ok(results):
    for rc, output in results:
        assert rc == 0, output[-4000:]
    return "\n".join(output for _, output in results)


def test_finetune_on_two_machines_writes_once_and_resumes(tiny_config_file, tmp_path):
    out, records = tmp_path / "out", tmp_path / "records"
    args = finetune_argv(
        tiny_config_file,
        out,
        "--seed",
        "3",
        "--checkpointing_steps",
        "2",
        image_size=32,
        num_train_images=8,
        num_eval_images=2,
        steps=3,
    )
    script = ROOT / "scripts" / "finetune_ade20k.py"

    # Steps 1-2 and a checkpoint, then stop as if the job had been preempted.
    log = _ok(launch(script, [*args, "--stop_after_step", "2"], records / "first"))
    assert log.count("Saved checkpoint") == 1, log[-3000:]  # logged by the global main process only
    assert "MULTI_CPU" in log and "Num processes: 2" in log
    marker = T.verify_checkpoint(out / "step_2")
    assert marker["run"]["num_processes"] == 2
    first = writers(records / "first", out)
    assert_single_writers(first)
    # The recorder sees the second machine's writes (its own RNG state), so a shared file it wrote would show.
    assert first["step_2/random_states_1.pkl"] == {"1"} or first[".tmp-step_2/random_states_1.pkl"] == {"1"}
    assert {".tmp-step_2/COMPLETE", ".tmp-step_2/model.safetensors"} <= set(first)

    # Both machines resume from it, finish, evaluate and save.
    log = _ok(
        launch(script, [*args, "--resume_from_checkpoint", "latest", "--debug_dump_weights"], records / "resumed")
    )
    assert log.count("Evaluation: mIoU") == 1 and log.count("Resuming from") == 1, log[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["resumed_from"].endswith("step_2") and results["train_steps"] == 3
    assert results["num_processes"] == 2 and results["effective_batch_size"] == 4
    ranks = [json.loads((out / "rank_checksums" / f"rank_{i}.json").read_text()) for i in range(2)]
    assert [r["process_index"] for r in ranks] == [0, 1] and ranks[0]["checksums"] == ranks[1]["checksums"]
    saved = T.weight_checksums(PaCaViTForSemanticSegmentation.from_pretrained(out))
    assert saved == ranks[0]["checksums"]
    resumed = writers(records / "resumed", out)
    assert_single_writers(resumed)
    assert {
        "all_results.json",
        "model.safetensors",
        "config.json",
        "init_report.json",
        "rank_checksums/rank_1.json",
    } <= set(resumed)


def test_imagenet_on_two_machines_writes_once_and_resumes(tmp_path):
    from test_train_imagenet import _image_folder

    _image_folder(tmp_path / "train")
    tiny_config(num_labels=3, drop_path_rate=0.1).to_json_file(tmp_path / "tiny.json")
    out, records = tmp_path / "out", tmp_path / "records"
    args = [
        "--config_name", tmp_path / "tiny.json", "--train_dir", tmp_path / "train", "--output_dir", out,
        "--cache_dir", tmp_path / "cache", "--image_size", "32", "--per_device_train_batch_size", "3",
        "--learning_rate", "2e-3", "--warmup_steps", "1", "--do_eval", "false", "--eval_strategy", "no",
        "--dataloader_num_workers", "0", "--log_level", "info",
        "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "steps",
        "--save_steps", "2", "--max_steps", "3",
    ]  # fmt: skip
    script = ROOT / "scripts" / "train_imagenet.py"

    log = _ok(launch(script, [*args, "--max_steps", "2"], records / "first"))
    assert log.count("global batch 6,") == 1, log[-3000:]  # 3 per device x 2 machines, logged once
    assert log.count("{'loss'") == 2  # Trainer's loss line of each step, printed once (not once per machine)
    first = writers(records / "first", out)
    assert_single_writers(first)
    assert first["checkpoint-2/rng_state_1.pth"] == {"1"}
    assert {
        "checkpoint-2/model.safetensors",
        "checkpoint-2/optimizer.pt",
        "model.safetensors",
        "train_results.json",
    } <= set(first)

    log = _ok(launch(script, [*args, "--resume_from_checkpoint", out / "checkpoint-2"], records / "resumed"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    resumed = writers(records / "resumed", out)
    assert_single_writers(resumed)
    assert {"checkpoint-3/model.safetensors", "model.safetensors", "all_results.json"} <= set(resumed)
    # Both processes hold the saved weights (DDP keeps them equal): each one's checksums, dumped at exit.
    ranks = [json.loads((records / "resumed" / f"weights_{i}.json").read_text()) for i in range(2)]
    assert ranks[0] == ranks[1] == T.weight_checksums(PaCaViTForImageClassification.from_pretrained(out))


def test_a_launch_that_would_train_each_machine_alone_is_refused(tiny_config_file, tmp_path, monkeypatch):
    """`accelerate launch --num_machines 2` without `--multi_gpu` on machines with fewer than two GPUs starts one
    independent process per machine (MASTER_ADDR set, no WORLD_SIZE): both scripts refuse, before writing."""
    out = tmp_path / "out"
    args = finetune_argv(tiny_config_file, out, image_size=32, num_train_images=2, num_eval_images=1, steps=1)
    [(rc, output)] = launch(
        ROOT / "scripts" / "finetune_ade20k.py", args, tmp_path / "records", machines=(1,), multi_gpu=False
    )
    assert rc == 1 and "Add --multi_gpu to the launch command" in output, output[-3000:]
    assert not out.exists()

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    for name in distributed.WORLD_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TrainingError, match="Add --multi_gpu"):
        imagenet_parse_args(["--config_name", "x", "--output_dir", str(out)])
    with pytest.raises(TrainingError, match="Add --multi_gpu"):
        runner.make_accelerator(finetune.parse_args(args))
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # accelerate's mpirun launch (--mpirun_hostfile): accepted
    distributed.check_launch()
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("WORLD_SIZE", "2")  # a distributed launch: accepted, and on the CPU without GPUs
    distributed.check_launch()
    assert distributed.distributed_on_cpu() is (not __import__("torch").cuda.is_available())


def test_fsdp_on_the_cpu_is_refused_with_the_reason(tiny_config_file, tmp_path, monkeypatch):
    """accelerate 1.x cannot shard on the CPU (its FSDP plugin needs a GPU-like device and `MULTI_CPU` never becomes
    FSDP), so a `--use_fsdp` launch on CPU processes stops with the reason instead of silently running DDP."""
    import torch

    args = finetune.parse_args(
        finetune_argv(
            tiny_config_file, tmp_path / "out", "--cpu", image_size=32, num_train_images=2, num_eval_images=1, steps=1
        )
    )
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(TrainingError, match="FSDP .* needs GPUs"):
        runner.make_accelerator(args)
    monkeypatch.setenv("WORLD_SIZE", "2")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="FSDP .* needs GPUs"):
            imagenet_parse_args(["--config_name", "x", "--output_dir", str(tmp_path / "out")])
    # The premise of the message: accelerate itself refuses FSDP with the launcher's default on the CPU. Only that
    # it refuses is asserted; its wording is accelerate's and changes between versions.
    if not torch.cuda.is_available():
        from accelerate.utils import FullyShardedDataParallelPlugin

        with pytest.raises(RuntimeError):
            FullyShardedDataParallelPlugin(sync_module_states=True)  # the launcher's default


class _OtherProcess:
    """The accelerator of a process that is not the main one: it must still take part in gathering the weights."""

    is_main_process = False

    def __init__(self):
        self.gathered = 0

    def get_state_dict(self, model):
        self.gathered += 1
        return {}


def test_the_final_save_gathers_the_weights_on_every_process(tmp_path):
    """`accelerator.get_state_dict` is a collective under FSDP (each process holds a shard), so `save_final` calls it
    on every process, writes nothing on the others, and the main process saves the gathered state dict."""
    from accelerate import Accelerator

    from paca_hf.training.segmentation import recipe_image_processor

    model = PaCaViTForSemanticSegmentation(tiny_config(num_labels=3))
    processor = recipe_image_processor((128, 32), True)
    other = _OtherProcess()
    runner.save_final(other, model, processor, tmp_path / "other")
    assert other.gathered == 1 and not (tmp_path / "other").exists()

    accelerator = Accelerator(cpu=True)
    try:
        gathered = {name: tensor.clone() for name, tensor in accelerator.get_state_dict(model).items()}
        gathered["decode_head.classifier.bias"].fill_(0.5)  # stands for the weights gathered from the shards
        runner.save_final(accelerator, model, processor, tmp_path / "main", gathered)
    finally:
        runner.reset_accelerate_state(accelerator)
    saved = PaCaViTForSemanticSegmentation.from_pretrained(tmp_path / "main")
    expected = T.weight_checksums(gathered)  # still whole after the save (the dump of --debug_dump_weights uses it)
    assert len(expected) == len(model.state_dict()) and T.weight_checksums(saved) == expected
