"""Reading the tensors of an untrusted `.pth` file without running code from it.

Training frameworks save more than tensors: timm's `CheckpointSaver` adds `args` (an `argparse.Namespace`), mmengine
a `meta` with a `message_hub` and numpy values, Lightning `hyper_parameters`. `torch.load(weights_only=True)` refuses
such files. `load_state_dict_file` reads them with the same restricted unpickler, after listing the file's globals
(`torch.serialization.get_unsafe_globals_in_checkpoint`, which reads without loading): inert types
(`argparse.Namespace`, numpy arrays, scalars and dtypes) are loaded as themselves, classes of known training frameworks are replaced by an
inert `IgnoredObject`, and any other global (`os.system`, `builtins.eval`, `subprocess.Popen`, ...) refuses the
file before anything is unpickled.
"""

import argparse
import importlib
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely (missing, corrupt, or needing code to load)."""


class IgnoredObject:
    """Stands in for an object of a training framework's class found in a checkpoint's metadata: it takes any
    arguments and state and does nothing with them."""

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<ignored {self.qualified_name}>"


# Packages whose objects appear in checkpoint metadata: their classes are replaced by `IgnoredObject`, never imported.
FRAMEWORK_PACKAGES = frozenset(
    {
        "mmengine",
        "mmcv",
        "mmseg",
        "mmdet",
        "mmpretrain",
        "mmcls",
        "lightning",
        "pytorch_lightning",
        "lightning_fabric",
        "omegaconf",
        "timm",
        "torchmetrics",
        "accelerate",
        "transformers",
    }
)
# numpy objects that only hold data (arrays, scalars, dtypes), as `module.name` patterns.
_NUMPY_DATA = re.compile(
    r"numpy(\._core|\.core)?\.multiarray\.(_reconstruct|scalar)|numpy\.(ndarray|dtype)|numpy\.dtypes\.\w+DType"
)
_INERT = {"argparse.Namespace": argparse.Namespace}


def _substitute(name: str):
    """The object loaded for the global `name` ("module.qualname"), or None when the global must refuse the file."""
    if name in _INERT:
        return _INERT[name]
    if _NUMPY_DATA.fullmatch(name):
        module, attribute = name.rsplit(".", 1)
        return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), attribute)
    if name.split(".")[0] in FRAMEWORK_PACKAGES and name.rsplit(".", 1)[-1][:1].isupper():
        return type(name.rsplit(".", 1)[-1], (IgnoredObject,), {"qualified_name": name})
    return None


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
_MAX_LEGACY_GLOBALS = 64


def _substitutes(path: Path, names: list[str]) -> list:
    """`torch.serialization.safe_globals` entries standing in for the pickle globals `names`; `CheckpointError` when
    one of them would run code."""
    substitutes, refused = [], []
    for name in names:
        substitute = _substitute(name)
        if substitute is None:
            refused.append(name)
        else:
            substitutes.append((substitute, name))
    if refused:
        raise CheckpointError(
            f"Refused to load {str(path)!r}: its pickle calls {', '.join(refused)}, which is not a tensor, an inert "
            f"value or a training framework's metadata; loading it would run code from the file, which is never done "
            f"for untrusted checkpoints. Nothing was executed."
        )
    if any(_NUMPY_DATA.fullmatch(name) for name in names):
        # Unpickling a dtype builds an instance of its class (`numpy.dtypes.Float64DType`), which is not a global
        # of the file: allow every dtype class, which only describes data.
        import numpy

        substitutes += [getattr(numpy.dtypes, name) for name in dir(numpy.dtypes) if name.endswith("DType")]
    return substitutes


def read_checkpoint(path: str | os.PathLike):
    """Unpickle a `torch.save` file without running code from it. Returns `(object, ignored)` with `ignored` the
    globals that were replaced by `IgnoredObject`. Raises `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    corrupt = (RuntimeError, EOFError, zipfile.BadZipFile, OSError, pickle.UnpicklingError)
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (
        *corrupt,
        ValueError,
    ) as error:  # ValueError: not a zip file (legacy `torch.save` format, or no checkpoint)
        # Legacy (non-zip) files cannot be inspected: torch's restricted unpickler below still guards them.
        names = []
        if zipfile.is_zipfile(path):
            raise CheckpointError(
                f"Could not read checkpoint {str(path)!r}: the file is truncated or corrupt "
                f"({type(error).__name__}: {error})."
            ) from error
    substitutes = _substitutes(path, names)
    # Legacy (non-zip) files cannot be inspected beforehand: torch's restricted unpickler names the first global it
    # does not allow, which is looked up like the others (at most one retry per global of the file).
    for _ in range(_MAX_LEGACY_GLOBALS):
        try:
            with torch.serialization.safe_globals(substitutes):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as error:
            match = _UNSUPPORTED_GLOBAL.search(str(error))
            if match is None or match.group(1) in names:
                raise CheckpointError(
                    f"Refused to load {str(path)!r}: it is not a plain tensor checkpoint (loading it would need to run "
                    f"code from the file, which is never done for untrusted checkpoints). Details: {error}"
                ) from error
            names.append(match.group(1))
            substitutes += _substitutes(path, [match.group(1)])
        except (*corrupt, KeyError) as error:  # KeyError: a byte that is no pickle opcode (not a checkpoint at all)
            raise CheckpointError(
                f"Could not read checkpoint {str(path)!r}: the file is truncated or corrupt, or not a torch.save file "
                f"({type(error).__name__}: {error})."
            ) from error
    else:
        raise CheckpointError(
            f"Refused to load {str(path)!r}: its pickle names more than {_MAX_LEGACY_GLOBALS} globals."
        )
    ignored = [
        entry[1]
        for entry in substitutes
        if isinstance(entry, tuple) and isinstance(entry[0], type) and issubclass(entry[0], IgnoredObject)
    ]
    return loaded, ignored


# Where the tensors are inside the usual checkpoint layouts, tried in order: timm / mmengine / Lightning
# (`state_dict`), DeiT-style (`model`), timm's EMA-only files (`state_dict_ema`).
STATE_DICT_ENTRIES = ("state_dict", "model", "state_dict_ema")
# Prefixes that wrap a whole model: DistributedDataParallel (`module.`), a LightningModule's attribute (`model.`).
WRAPPER_PREFIXES = ("module.", "model.")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a plain state dict, or one under `state_dict` / `model` / `state_dict_ema`
    (timm's `CheckpointSaver`, mmseg / mmengine's `{"meta", "state_dict"}`, Lightning), with a `module.` or
    `model.` prefix shared by every key removed. What else the file holds is logged as ignored. Raises
    `CheckpointError` for missing, corrupt or code-running files and for files holding no state dict."""
    return load_state_dict_and_meta(path)[0]


def load_state_dict_and_meta(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], object]:
    """[`load_state_dict_file`] and the checkpoint's `meta` entry (mmseg / mmdet / mmengine: dataset classes,
    config, versions), None when it has none."""
    checkpoint, ignored = read_checkpoint(path)
    other, meta = [], None
    if isinstance(checkpoint, dict):
        meta = checkpoint.get("meta")
        for entry in STATE_DICT_ENTRIES:
            if isinstance(checkpoint.get(entry), dict):
                other = [key for key in checkpoint if key != entry]
                checkpoint = checkpoint[entry]
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CheckpointError(f"Checkpoint {str(path)!r} holds no state dict (got {type(checkpoint).__name__}).")
    non_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"Checkpoint {str(path)!r} has entries that are not tensors: {non_tensors[:10]}.")
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in checkpoint):
            checkpoint = {key[len(prefix) :]: value for key, value in checkpoint.items()}
    alternatives = [key for key in other if key in STATE_DICT_ENTRIES + ("model_ema",)]
    if other or ignored:
        # Objects of a framework's classes, and a second set of weights (timm's EMA) not taken, are worth a warning.
        log = logger.warning if ignored or alternatives else logger.info
        log(
            f"Read the tensors of {Path(path).name}; ignored its other entries ({', '.join(map(str, other)) or 'none'})"
            + (f" and, as inert placeholders, objects of {', '.join(sorted(set(ignored)))}" if ignored else "")
            + (
                f". It also holds the weights {', '.join(alternatives)} (e.g. timm's EMA), which were not converted: "
                f"save that entry alone as a state dict to convert it"
                if alternatives
                else ""
            )
        )
    return dict(checkpoint), meta
