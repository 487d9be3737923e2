"""Publishing the releases: locate or download each authors' checkpoint, build and check its repo, upload it; one
release's failure never stops the others."""

import os
import shutil
import urllib.request
from pathlib import Path

from ..releases import RELEASES, Release, get_release
from .errors import PublishError
from .repo import PICKLE_SUFFIXES, build_repo


def download_checkpoint(url: str, destination: str | os.PathLike) -> Path:
    """Download `url` to `destination` (kept if already complete). Refuses in offline mode (`HF_HUB_OFFLINE`)."""
    from huggingface_hub import constants

    destination = Path(destination)
    if destination.is_file():
        return destination
    if constants.is_offline_mode():
        raise PublishError(
            f"Offline (HF_HUB_OFFLINE is set): cannot download {url}; pass --checkpoints-dir with the file."
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            shutil.copyfileobj(response, handle, length=1 << 20)
        os.replace(partial, destination)
    except OSError as error:
        raise PublishError(f"Could not download {url}: {error}") from error
    finally:
        partial.unlink(missing_ok=True)
    return destination


def locate_checkpoint(release: Release, checkpoints_dir=None, download_dir=None, download=download_checkpoint):
    """The checkpoint file of a release: from `checkpoints_dir` when given (never downloaded then), else downloaded
    from the authors' release URL into `download_dir`."""
    if checkpoints_dir is not None:
        for name in release.checkpoint_filenames:
            if (Path(checkpoints_dir) / name).is_file():
                return Path(checkpoints_dir) / name
        raise PublishError(
            f"No checkpoint for {release.official_name} in {checkpoints_dir} (looked for "
            f"{', '.join(release.checkpoint_filenames)})."
        )
    if release.url is None:
        raise PublishError(f"{release.official_name} has no release URL ({release.note}); pass --checkpoints-dir.")
    return download(release.url, Path(download_dir) / release.checkpoint_filenames[0])


def upload_repo(api, repo_id: str, folder: str | os.PathLike, files: list[str], commit_message: str) -> None:
    """Create the Hub repo if needed and upload exactly `files` of a checked folder in one commit, deleting any
    pickle file an earlier upload may have left."""
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=list(files),
        delete_patterns=[f"*{suffix}" for suffix in PICKLE_SUFFIXES],
        commit_message=commit_message,
    )


def publish(
    names=None,
    checkpoints_dir=None,
    work_dir="outputs/hub",
    api=None,
    dry_run: bool = False,
    download=download_checkpoint,
    log=print,
) -> dict[str, str]:
    """Build, check and upload the repos of `names` (official names or repo ids; default: every release). A repo is
    uploaded (`api.create_repo` then `api.upload_folder`) only after `build_repo` succeeded, i.e. after a strict
    conversion and every check; with `dry_run` nothing is uploaded and the repo id and files are printed. Releases
    without a download link are skipped unless named or found in `checkpoints_dir`. Any error of one release
    (conversion, check, download or upload) is reported and the next release goes on.

    Returns {official name: "uploaded" | "dry-run" | "skipped: ..." | "failed: ..."}."""
    releases = [get_release(name) for name in names] if names else list(RELEASES)
    if api is None and not dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
    work_dir = Path(work_dir)
    status = {}
    for release in releases:
        name = release.official_name
        if (
            release.url is None
            and not names
            and (
                checkpoints_dir is None
                or not any((Path(checkpoints_dir) / file).is_file() for file in release.checkpoint_filenames)
            )
        ):
            status[name] = f"skipped: {release.note}"
            log(f"skipped: {name}: {release.note}")
            continue
        try:
            status[name] = _publish_one(release, checkpoints_dir, work_dir, api, dry_run, download, log)
        except Exception as error:  # noqa: BLE001 - every failure is reported and the next release goes on
            message = str(error) or type(error).__name__
            if not isinstance(error, PublishError) and not type(error).__name__.endswith("Error"):
                message = f"{type(error).__name__}: {message}"
            status[name] = f"failed: {message}"
            log(f"error: {name}: nothing uploaded to {release.repo_id}: {message}")
    return status


def _publish_one(release: Release, checkpoints_dir, work_dir: Path, api, dry_run: bool, download, log) -> str:
    checkpoint = locate_checkpoint(release, checkpoints_dir, work_dir / "downloads", download)
    log(f"converting {release.official_name} from {checkpoint}")
    built = build_repo(checkpoint, release, work_dir / "repos" / release.repo_name)
    built.model = None  # free it before the next release is built
    if dry_run:
        size = sum((built.folder / file).stat().st_size for file in built.files)
        log(f"[dry-run] would upload {release.repo_id} ({len(built.files)} files, {size / 1e6:.1f} MB):")
        for file in built.files:
            log(f"  {file}")
        return "dry-run"
    upload_repo(
        api,
        release.repo_id,
        built.folder,
        built.files,
        commit_message=f"Upload {release.official_name}, converted from the authors' checkpoint",
    )
    log(f"uploaded {release.repo_id}")
    return "uploaded"


def summary_table(status: dict[str, str]) -> str:
    """One line per release: its outcome, aligned."""
    width = max(map(len, status), default=0)
    return "\n".join(f"{name:<{width}}  {state}" for name, state in status.items())
