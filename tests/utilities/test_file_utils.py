"""paca_hf.file_utils, the one home for writing files so that a reader never sees half of them."""

import os
import stat

import pytest

from paca_hf.file_utils import atomic_file, write_dir_atomically, write_text_atomically


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_file_replaces_only_on_a_clean_exit(tmp_path):
    target = tmp_path / "picture.png"
    write_text_atomically(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["picture.png"]  # no temporary file left

    with atomic_file(target, "wb") as handle:
        handle.write(b"\x89PNG")
        assert target.read_text() == "old"  # not visible before the rename
    assert target.read_bytes() == b"\x89PNG" and _mode(target) == 0o666 & ~_umask()


def test_atomic_file_refuses_partial_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_file(tmp_path / "log.txt", "a"):
            pass


def test_write_dir_atomically_never_deletes_what_it_does_not_rewrite(tmp_path):
    folder = tmp_path / "out"
    write_dir_atomically(folder, lambda tmp: (tmp / "a.txt").write_text("1"))
    write_dir_atomically(folder, lambda tmp: (tmp / "a.txt").write_text("2"))  # loses nothing: replaced
    assert (folder / "a.txt").read_text() == "2" and _mode(folder) == 0o777 & ~_umask()
    (folder / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"mine\.txt"):
        write_dir_atomically(folder, lambda tmp: (tmp / "a.txt").write_text("3"))
    assert (folder / "a.txt").read_text() == "2" and (folder / "mine.txt").read_text() == "keep"
    write_dir_atomically(folder, lambda tmp: (tmp / "a.txt").write_text("4"), may_replace=lambda f: True)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
