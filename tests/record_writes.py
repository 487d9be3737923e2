"""Run a script (`python record_writes.py SCRIPT ARGS...`, e.g. as `accelerate launch`'s training script) and record
every file this process writes, renames or removes, to tell which process of a distributed run wrote what.

Records go to `$PACA_RECORD_WRITES/writes_<RANK>_<pid>.tsv`, one line per event: `rank<TAB>event<TAB>path`. After
`transformers.Trainer.train`, the process also writes the sha256 of each of its model's tensors
(`paca_hf.training.weight_checksums`) to `$PACA_RECORD_WRITES/weights_<RANK>.json`, to compare the processes.
Python-level file operations are seen through an audit hook (`open` for writing, `os.rename` / `os.replace`,
`os.remove`, `os.rmdir`, `shutil.rmtree`); `torch.save` and safetensors' `save_file`, which write from C++ / Rust,
are wrapped before accelerate and transformers import them.
"""

import json
import os
import runpy
import sys


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install(log_dir: str) -> None:
    rank = os.environ.get("RANK", "none")
    os.makedirs(log_dir, exist_ok=True)
    log = os.open(os.path.join(log_dir, f"writes_{rank}_{os.getpid()}.tsv"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def record(event: str, path) -> None:
        if isinstance(path, int):
            return
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return
        os.write(log, f"{rank}\t{event}\t{path}\n".encode())

    def hook(event: str, args) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            # NamedTemporaryFile passes its folder to `open` (its opener makes the file): not a write of the folder.
            if writing and not (isinstance(path, (str, bytes, os.PathLike)) and os.path.isdir(path)):
                record("write", path)
        elif event == "os.rename":
            record("rename_from", args[0])
            record("rename_to", args[1])
        elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
            record("remove", args[0])

    import safetensors.torch
    import torch

    torch_save, safetensors_save = torch.save, safetensors.torch.save_file

    def recorded_torch_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            record("write", f)
        return torch_save(obj, f, *args, **kwargs)

    def recorded_save_file(tensors, filename, *args, **kwargs):
        record("write", filename)
        return safetensors_save(tensors, filename, *args, **kwargs)

    torch.save = torch.serialization.save = recorded_torch_save
    safetensors.torch.save_file = recorded_save_file

    import transformers

    from paca_hf.training import weight_checksums

    train = transformers.Trainer.train

    def train_and_record_weights(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        with open(os.path.join(log_dir, f"weights_{rank}.json"), "w") as file:
            json.dump(weight_checksums(self.model), file)
        return result

    transformers.Trainer.train = train_and_record_weights
    sys.addaudithook(hook)


if __name__ == "__main__":
    _install(os.environ["PACA_RECORD_WRITES"])
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
