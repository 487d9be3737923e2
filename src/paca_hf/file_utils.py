"""Writing files so that a reader never sees half of them: the one home for atomic folders, checksums and fsync.

Used by everything that writes something a user keeps: converted checkpoints and Hub repos (`paca_hf.hub`),
training checkpoints and saved models (`paca_hf.training`).
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


# Permissions of folders this package creates: `tempfile.mkdtemp` makes them 0o700, which would leave converted
# models and checkpoints unreadable to the user's group once moved into place.
_FOLDER_MODE = 0o777


def sha256sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in `chunk_size`-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames into it) to disk; a no-op where the platform cannot open folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temporary_dir(beside: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder in `beside`'s parent (same filesystem, so it can be renamed into place), with the normal
    permissions of a folder the user creates (mode 0o777 minus the umask), not `mkdtemp`'s 0o700."""
    parent = Path(beside).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, _FOLDER_MODE & ~_umask())
    return folder


def give_normal_permissions(folder: str | os.PathLike) -> None:
    """Give every file under `folder` mode 0o666 and every folder (itself included) 0o777, minus the umask: what the
    user's own tools would create. Some writers create private files (safetensors writes 0o600, `mkdtemp` makes
    0o700 folders), which would leave a saved model unreadable to the user's group or a serving account."""
    folder = Path(folder)
    os.chmod(folder, _FOLDER_MODE & ~_umask())
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, (_FOLDER_MODE if path.is_dir() else 0o666) & ~_umask())


def remove_dir(folder: str | os.PathLike) -> None:
    """Delete a folder tree, renaming it first so that a half-deleted folder never looks like a complete one."""
    folder = Path(folder)
    if not folder.exists():
        return
    doomed = folder.with_name(f".deleting-{folder.name}-{os.getpid()}-{time.time_ns()}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def replace_dir(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Move the finished folder `source` to `destination`, replacing an existing folder there. The old folder is
    moved aside first and put back if the final rename fails, so `destination` is at every moment either the old
    folder or the new one."""
    source, destination = Path(source), Path(destination)
    if destination.exists():
        aside = destination.with_name(f".previous-{destination.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(destination, aside)
        try:
            os.replace(source, destination)
        except BaseException:
            os.replace(aside, destination)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, destination)
    fsync_dir(destination.parent)
    return destination


def _entries_lost_by_replacing(existing: Path, replacement: Path) -> list[str]:
    """Top-level names in the folder `existing` that the folder `replacement` does not have."""
    return sorted(entry.name for entry in existing.iterdir() if not (replacement / entry.name).exists())


def check_replaceable_dir(output_dir: str | os.PathLike) -> None:
    """`FileExistsError` when `output_dir` exists but is not a folder: [`write_dir_atomically`] only ever replaces a
    folder. Call it before long work to fail early."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{str(output_dir)!r} exists and is not a folder; choose a folder to write into.")


def write_dir_atomically(
    output_dir: str | os.PathLike,
    write: Callable[[Path], object],
    may_replace: Callable[[Path], bool] | None = None,
) -> Path:
    """Call `write(tmp_dir)` on a fresh folder beside `output_dir`, give every file it wrote the normal permissions
    (0o666 / 0o777 for folders, minus the umask) and flush it, then move it into place
    with [`replace_dir`]. If `write` raises, the temporary folder is removed and an existing `output_dir` is left
    untouched. Returns the resolved `output_dir`.

    An existing `output_dir` is replaced only when it is a folder and nothing in it would be lost: every top-level
    entry of it is written anew, or `may_replace(output_dir)` says the folder is an earlier output of the same kind
    (e.g. a model folder with its `config.json`). Otherwise `FileExistsError` names what would be lost, and nothing
    is changed: a user's own files (or the checkpoint being converted) are never deleted."""
    output_dir = Path(output_dir).resolve()
    check_replaceable_dir(output_dir)
    tmp_dir = make_temporary_dir(output_dir, prefix=f".{output_dir.name}.tmp-")
    try:
        write(tmp_dir)
        if output_dir.is_dir() and not (may_replace is not None and may_replace(output_dir)):
            lost = _entries_lost_by_replacing(output_dir, tmp_dir)
            if lost:
                shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
                raise FileExistsError(
                    f"{str(output_dir)!r} already holds files that this output does not replace ({shown}); it is "
                    "left as it is. Choose a new or empty folder, or remove those files first."
                )
        give_normal_permissions(tmp_dir)
        for path in tmp_dir.rglob("*"):
            if path.is_file():
                fsync_file(path)
        replace_dir(tmp_dir, output_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return output_dir


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing (`mode` "w" or "wb", `open` keyword arguments such as
    `newline`), and on a clean exit flush it and rename it to `path` with normal permissions: readers see the old
    file or the whole new one, never a half-written one. On an error the temporary file is removed.

        with atomic_file("picture.png", "wb") as handle:
            image.save(handle, format="PNG")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with open(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through [`atomic_file`]: readers see the old file or the whole new one."""
    with atomic_file(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomically(path: str | os.PathLike, data, **dump_kwargs) -> Path:
    """[`write_text_atomically`] of `json.dumps(data, **dump_kwargs)` (default `indent=2`) plus a newline."""
    dump_kwargs.setdefault("indent", 2)
    return write_text_atomically(path, json.dumps(data, **dump_kwargs) + "\n")


def file_manifest(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """`{relative posix path: {"size": bytes, "sha256": hex}}` for every file under `folder` (names in `exclude`
    left out): what a completeness marker records and [`verify_manifest`] checks."""
    folder = Path(folder)
    manifest = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative not in exclude:
            manifest[relative] = {"size": path.stat().st_size, "sha256": sha256sum(path)}
    return manifest


def verify_manifest(folder: str | os.PathLike, manifest: dict[str, dict], check_hashes: bool = True) -> list[str]:
    """Problems found comparing `folder` with a [`file_manifest`] (missing, truncated or corrupted files), as
    sentences; an empty list when every file is as recorded."""
    folder = Path(folder)
    problems = []
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            problems.append(f"{name} has {size} bytes, expected {expected['size']} (truncated or overwritten)")
        elif check_hashes and sha256sum(path) != expected["sha256"]:
            problems.append(f"{name} does not match its recorded sha256 (corrupted)")
    return problems
