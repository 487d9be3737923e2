import os
import sys
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Two pytest-xdist workers share two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole test module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    models on two shared cores run far faster with one thread than with two competing ones, and runs compared for
    bitwise-equal weights need the same thread count. Module scope, so the module's fixtures run under it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory):
    """config.json of the tiny model, with drop path on (so that resumed runs must restore the dropout RNG)."""
    from tiny_configs import tiny_config  # imported here: this module sets the offline environment before paca_hf

    path = tmp_path_factory.mktemp("config") / "config.json"
    tiny_config(drop_path_rate=0.1).to_json_file(path)
    return path
