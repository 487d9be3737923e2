"""Shared by the fine-tuning tests: the command line of a few steps of a tiny model (its config file is the
`tiny_config_file` fixture of conftest.py, or a detector's), a two-process launch on the CPU, a free port, a
permissions check."""

import os
import socket
import subprocess
import sys
from pathlib import Path


def scenes_argv(config, output_dir, *extra, task_flags, image_size, num_train_images, num_eval_images, steps):
    """Arguments of either fine-tune (segmentation or detection `finetune.main`) for `steps` steps of the model of the
    config file `config` on built-in scenes of `image_size` px, warm-up 1 step, learning rate 1e-3, no progress bar;
    then the task's `task_flags`, and `extra` last, so they override these."""
    return [
        "--config_name",
        str(config),
        "--dataset_name",
        "builtin-scenes",
        "--builtin_image_size",
        str(image_size),
        "--num_train_images",
        str(num_train_images),
        "--num_eval_images",
        str(num_eval_images),
        "--max_train_steps",
        str(steps),
        "--num_warmup_steps",
        "1",
        "--learning_rate",
        "1e-3",
        "--output_dir",
        str(output_dir),
        "--disable_tqdm",
        *task_flags,
        *extra,
    ]


def finetune_argv(config, output_dir, *extra, image_size, num_train_images, num_eval_images, steps):
    """Arguments of the fine-tune (`paca_hf.training.segmentation.finetune.main`) for a few steps of a tiny model on
    the built-in scenes (crops of the whole image, the config's clusters); `extra` come last, so they override
    these."""
    return scenes_argv(
        config,
        output_dir,
        *extra,
        task_flags=["--num_clusters", "keep", "--crop_size", str(image_size)],
        image_size=image_size,
        num_train_images=num_train_images,
        num_eval_images=num_eval_images,
        steps=steps,
    )


def launch_on_two_cpu_processes(script, args, root) -> tuple[int, str]:
    """`accelerate launch --multi_gpu --num_processes 2 script *args` on one machine without GPUs (gloo on the CPU),
    one thread each, offline, with `root/src` on the path; `(exit status, output)`. Killed after 300 s."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=str(Path(root) / "src"),
    )
    env.pop("ACCELERATE_USE_CPU", None)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(script),
        *map(str, args),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=root)
    return completed.returncode, completed.stdout + completed.stderr


def free_port() -> int:
    """A TCP port free on the loopback interface now, for a distributed run's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_normal_permissions(folder) -> None:
    """Every file and folder under `folder` has the modes the user's own tools would give it (0o666 / 0o777 minus
    the umask): none is private to the writing process (safetensors writes 0o600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    private = {
        str(path.relative_to(folder)): oct(path.stat().st_mode & 0o777)
        for path in [Path(folder), *Path(folder).rglob("*")]
        if (path.stat().st_mode & 0o777) != ((0o777 if path.is_dir() else 0o666) & ~umask)
    }
    assert not private, f"unusual permissions: {private}"
