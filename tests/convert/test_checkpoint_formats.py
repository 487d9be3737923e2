"""Checkpoint files as training frameworks write them (timm, Lightning, mmengine, numpy metadata) are read without
running code from them; a pickle that calls a function is refused before anything runs; converted folders have
normal permissions."""

import argparse
import os
import stat
import sys
import types

import numpy as np
import pytest
import torch
from reference import case_checkpoint, case_config

from paca_hf.checkpoint_reader import IgnoredObject, read_checkpoint
from paca_hf.convert import ConversionError, load_checkpoint
from paca_hf.hub import convert_checkpoint


NAME = "cls_mlp_stagewise"


@pytest.fixture(scope="module")
def state_dict():
    return torch.load(case_checkpoint(NAME), weights_only=True)


def assert_same_tensors(loaded, expected):
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_timm_checkpoint_saver_file(tmp_path, state_dict, caplog):
    # What timm's CheckpointSaver writes: the args of the training run as an argparse.Namespace.
    args = argparse.Namespace(model="pacavit_tiny_p2cconv_100_0", lr=1e-3, epochs=300)
    torch.save(
        {
            "epoch": 299,
            "arch": "pacavit_tiny_p2cconv_100_0",
            "state_dict": state_dict,
            "version": 2,
            "args": args,
            "state_dict_ema": {k: v + 1 for k, v in state_dict.items()},
            "metric": 80.9,
        },
        tmp_path / "timm.pth.tar",
    )
    with pytest.raises(Exception):  # the plain weights-only loader refuses it: what this reader is for
        torch.load(tmp_path / "timm.pth.tar", weights_only=True)
    with caplog.at_level("WARNING"):
        assert_same_tensors(load_checkpoint(tmp_path / "timm.pth.tar"), state_dict)  # `state_dict`, not the EMA
    assert "holds the weights state_dict_ema" in caplog.text and "not converted" in caplog.text  # said, not hidden
    loaded, ignored = read_checkpoint(tmp_path / "timm.pth.tar")
    assert loaded["args"] == args and ignored == []  # an inert type, loaded as itself


def test_numpy_metadata(tmp_path, state_dict):
    meta = {"best_metric": np.float64(80.9), "history": np.arange(4, dtype=np.float32), "step": np.int64(7)}
    torch.save({"state_dict": state_dict, "meta": meta}, tmp_path / "numpy.pth")
    assert_same_tensors(load_checkpoint(tmp_path / "numpy.pth"), state_dict)
    loaded, _ = read_checkpoint(tmp_path / "numpy.pth")
    np.testing.assert_array_equal(loaded["meta"]["history"], np.arange(4, dtype=np.float32))
    assert loaded["meta"]["best_metric"] == 80.9


def test_lightning_checkpoint(tmp_path, state_dict):
    torch.save(
        {
            "epoch": 3,
            "global_step": 300,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{key}": value for key, value in state_dict.items()},
            "hyper_parameters": {"lr": 1e-3, "args": argparse.Namespace(batch_size=64)},
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        tmp_path / "lightning.ckpt",
    )
    assert_same_tensors(load_checkpoint(tmp_path / "lightning.ckpt"), state_dict)


def _framework_class(monkeypatch, module_name, class_name):
    """A class that pickles as `module_name.class_name` (as if from that framework, which is not installed here),
    registered in `sys.modules` with its parent packages while the test file is written."""
    parts = module_name.split(".")
    for index in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:index]), types.ModuleType(".".join(parts[:index])))
    cls = type(class_name, (), {"__module__": module_name})
    setattr(sys.modules[module_name], class_name, cls)
    return cls


def test_mmengine_checkpoint_with_framework_objects(tmp_path, state_dict, monkeypatch):
    with monkeypatch.context() as patch:
        history_buffer = _framework_class(patch, "mmengine.logging.history_buffer", "HistoryBuffer")
        buffer = history_buffer()
        buffer.data = np.ones(3)
        meta = {
            "mmengine_version": "0.7.4",
            "epoch": 12,
            "seed": np.int64(0),
            "message_hub": {"log_scalars": {"train/loss": buffer}, "runtime_info": {"iter": 160000}},
        }
        torch.save({"meta": meta, "state_dict": state_dict, "optimizer": {}}, tmp_path / "mmengine.pth")
    assert "mmengine" not in sys.modules  # reading below must not import the framework
    assert_same_tensors(load_checkpoint(tmp_path / "mmengine.pth"), state_dict)
    loaded, ignored = read_checkpoint(tmp_path / "mmengine.pth")
    assert ignored == ["mmengine.logging.history_buffer.HistoryBuffer"]
    placeholder = loaded["meta"]["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(placeholder, IgnoredObject) and "HistoryBuffer" in repr(placeholder)
    assert "mmengine.logging.history_buffer" not in sys.modules


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalExploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("exploit", [Exploit, EvalExploit])
def test_pickle_calling_a_function_is_refused_and_nothing_runs(tmp_path, state_dict, exploit):
    marker = tmp_path / "pwned"
    # Hidden among metadata that alone would be accepted.
    torch.save(
        {"state_dict": state_dict, "args": argparse.Namespace(a=1), "payload": exploit(marker)}, tmp_path / "evil.pth"
    )
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"Refused to load .*(system|eval).*Nothing was executed"):
        convert_checkpoint(tmp_path / "evil.pth", case_config(NAME), output)
    assert not marker.exists() and not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["evil.pth"]


def test_legacy_torch_save_format_with_metadata(tmp_path, state_dict):
    """Files in torch's pre-1.6 (non-zip) format cannot be inspected before unpickling: their inert metadata is
    still accepted and their tensors loaded."""
    path = tmp_path / "legacy.pth"
    torch.save(
        {
            "state_dict": state_dict,
            "args": argparse.Namespace(model=NAME),
            "best_metric": np.float64(80.9),
            "history": np.arange(3),
        },
        path,
        _use_new_zipfile_serialization=False,
    )
    assert_same_tensors(load_checkpoint(path), state_dict)


@pytest.mark.parametrize("exploit", [Exploit, EvalExploit])
def test_legacy_format_pickle_calling_a_function_is_refused_and_nothing_runs(tmp_path, state_dict, exploit):
    marker = tmp_path / "pwned"
    torch.save(
        {"state_dict": state_dict, "args": argparse.Namespace(a=1), "payload": exploit(marker)},
        tmp_path / "evil.pth",
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(ConversionError, match="Refused to load"):
        convert_checkpoint(tmp_path / "evil.pth", case_config(NAME), tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["evil.pth"]


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=r"Could not read checkpoint .*notes\.pth"):
        load_checkpoint(path)


def test_converted_folder_has_normal_permissions(tmp_path):
    output = tmp_path / "converted"
    convert_checkpoint(case_checkpoint(NAME), case_config(NAME), output)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(output.stat().st_mode) == 0o777 & ~umask
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask for path in output.iterdir())
