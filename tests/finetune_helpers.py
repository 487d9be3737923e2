"""Shared by the fine-tuning tests: the command line of a few steps of a tiny model (its config file is the
`tiny_config_file` fixture of conftest.py), a free port, a permissions check."""

import socket


def finetune_argv(config, output_dir, *extra, image_size, num_train_images, num_eval_images, steps):
    """Arguments of the fine-tune (`paca_hf.training.segmentation.finetune.main`) for a few steps of a tiny model on
    the built-in scenes; `extra` come last, so they override these."""
    return [
        "--config_name",
        str(config),
        "--num_clusters",
        "keep",
        "--dataset_name",
        "builtin-scenes",
        "--builtin_image_size",
        str(image_size),
        "--crop_size",
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
        *extra,
    ]


def free_port() -> int:
    """A TCP port free on the loopback interface now, for a distributed run's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_normal_permissions(folder) -> None:
    """Every file and folder under `folder` has the modes the user's own tools would give it (0o666 / 0o777 minus
    the umask): none is private to the writing process (safetensors writes 0o600 files)."""
    import os
    from pathlib import Path

    umask = os.umask(0)
    os.umask(umask)
    private = {
        str(path.relative_to(folder)): oct(path.stat().st_mode & 0o777)
        for path in [Path(folder), *Path(folder).rglob("*")]
        if (path.stat().st_mode & 0o777) != ((0o777 if path.is_dir() else 0o666) & ~umask)
    }
    assert not private, f"unusual permissions: {private}"
