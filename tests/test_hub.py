"""Hub repos of the released checkpoints: release table, remote code, model cards, loading by name from the Hugging
Face cache (with `import paca_hf`, and as remote code where paca_hf cannot be imported), and the publish path
against a recording stand-in for the Hub API (nothing touches the network)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, constants
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from safetensors.torch import load_file

from paca_hf import hub
from paca_hf.configuration_pacavit import OFFICIAL_NAMES
from reference import case_checkpoint, case_config, manifest, require_reference
from test_official_models import random_state_dict


ROOT = Path(__file__).resolve().parents[1]
CASE = "cls_conv_stagewise"
REPO_ID = "ivmcl/pacavit-small"
SEG_CASE = "seg_pacahead_conv"
SEG_REPO_ID = "ivmcl/pacavit-small-ade20k"
TINY = "pacavit_tiny_p2cconv_100_0"


# ------------------------------------------------------------------------------------------------ release table


def test_release_table_matches_the_authors_releases():
    results = json.loads((require_reference() / "paper_results.json").read_text())
    published = {entry["name"]: entry for key in ("imagenet_1k_224", "ade20k_512", "coco_mask_rcnn_1x")
                 for entry in results[key]}
    table = {release.official_name: release for release in hub.RELEASES}
    assert len(table) == len(hub.RELEASES)
    # Every published checkpoint is in the table with its URL and numbers; nothing else has a URL.
    for name, entry in published.items():
        release = table[name]
        assert release.url == entry["url"], name
        assert release.metric == entry.get("top1", entry.get("miou_single_scale")), name
        assert release.params_m == entry["params_m"], name
        assert release.gmacs == entry.get("gmacs", entry.get("gflops")), name
        if "box_ap" in entry:
            assert release.result == f"{entry['box_ap']} box AP / {entry['mask_ap']} mask AP", name
    assert {name for name, release in table.items() if release.url} == set(published)
    # Every official name we can convert has a repo; the others say why not.
    assert {release.official_name for release in hub.convertible_releases()} == set(OFFICIAL_NAMES)
    assert all(release.note.startswith("not converted") for release in table.values() if not release.convertible)
    repo_ids = [release.repo_id for release in hub.convertible_releases()]
    assert len(set(repo_ids)) == len(repo_ids) == 19
    assert all(re.fullmatch(r"ivmcl/pacavit-[a-z0-9-]+", repo_id) for repo_id in repo_ids)
    for name, repo in [(TINY, "pacavit-tiny"), ("pacavit_small_p2cconv_100_0", "pacavit-small"),
                       ("pacavit_base_p2cconv_100_0", "pacavit-base"),
                       ("pacavit_small_p2cmlp_100_0", "pacavit-small-mlp"),
                       ("pacavit_convmixer_small_100", "pacavit-small-teacher"),
                       ("pacavit_convmixer_base_100", "pacavit-base-teacher"),
                       ("pacavit_small_p2cconv_100_blockwise", "pacavit-small-blockwise"),
                       ("pacahead_pacavit_small_p2cconv_100_0_512x512_160k_ade20k", "pacavit-small-ade20k")]:
        assert hub.get_release(name).repo_id == f"ivmcl/{repo}"
        assert hub.get_release(f"ivmcl/{repo}").official_name == name
    # The tiny teacher is in the authors' manifest but has no download link or published result.
    teacher = hub.get_release("pacavit_convmixer_tiny_100")
    assert teacher.url is None and teacher.metric is None and "not released" in teacher.note
    entry = manifest()["pacavit_convmixer_tiny_100"]
    assert teacher.params_m == round(entry["num_parameters"] / 1e6, 1)
    assert teacher.gmacs == round(entry["gmacs_224"], 1)
    with pytest.raises(KeyError, match="pacavit_small_p2cconv_100_0"):
        hub.get_release("pacavit_huge")


def test_releases_table_markdown():
    table = hub.render_releases_table()
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(hub.RELEASES)
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 4 for line in lines)
    assert ("| `pacavit_small_p2cconv_100_0` | [`ivmcl/pacavit-small`](https://huggingface.co/ivmcl/pacavit-small) | "
            "ImageNet-1k classification | 83.08% top-1 | [IMNET_224_pacavit_small_p2cconv_100_0.pth]"
            "(https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_100_0.pth) |"
            ) in lines
    assert any(line.startswith("| `pacavit_convmixer_tiny_100` |") and "not released" in line for line in lines)


def test_readme_has_the_releases_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(hub.render_releases_table()) == 1, (
        "README.md must contain the output of paca_hf.hub.render_releases_table() "
        "(`python scripts/publish_all.py --list`) exactly once"
    )


# ------------------------------------------------------------------------------------------------ remote code


def test_remote_code_files_need_no_paca_hf(tmp_path):
    files = hub.remote_code_files()
    assert sorted(path.name for path in files) == [
        "configuration_pacavit.py", "image_processing_pacavit.py", "modeling_pacavit.py"
    ]
    (tmp_path / "configuration_pacavit.py").write_text("from paca_hf.data import thing\n")
    (tmp_path / "modeling_pacavit.py").write_text("from .configuration_pacavit import X\nfrom ..up import y\n")
    (tmp_path / "image_processing_pacavit.py").write_text("import scipy\nfrom .helpers import z\n")
    with pytest.raises(hub.PublishError) as error:
        hub.remote_code_files(tmp_path)
    message = str(error.value)
    for problem in ("'paca_hf.data'", "from ..up", "'scipy'", "helpers.py is imported but does not exist"):
        assert problem in message


# ------------------------------------------------------------------------------------------------ model cards


@pytest.mark.parametrize("release", hub.convertible_releases(), ids=lambda release: release.repo_name)
def test_model_card_metadata(release):
    entry = manifest()[release.official_name]
    card = hub.render_model_card(release, num_parameters=entry["num_parameters"], checkpoint_sha256="ab" * 32)
    hub.check_model_card(str(card), release)
    card = ModelCard(str(card))
    data = card.data
    assert data.license == "mit" and data.library_name == "transformers" and "pacavit" in data.tags
    if release.task == hub.CLASSIFICATION:
        assert data.pipeline_tag == "image-classification" and data.datasets == ["imagenet-1k"]
        assert data.base_model is None
    else:
        assert data.pipeline_tag == "image-segmentation" and data.datasets == ["scene_parse_150"]
        assert data.base_model == hub.get_release(release.imagenet_backbone).repo_id
    assert f"{entry['num_parameters']:,}" in card.text and str(release.gmacs) in card.text
    assert "PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers" in card.text
    if release.metric is None:
        assert "model-index" not in data.to_dict() and "not published" in card.text
        return
    name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    assert name == release.repo_name and len(results) == 1
    assert results[0].metric_value == release.metric and results[0].dataset_type == release.dataset
    assert results[0].task_type == data.pipeline_tag
    assert release.url in card.text


def test_card_check_rejects_a_wrong_card():
    release = hub.get_release("pacavit_small_p2cconv_100_0")
    text = str(hub.render_model_card(release, num_parameters=1))
    with pytest.raises(hub.PublishError, match="model-index"):
        hub.check_model_card(text.replace("value: 83.08", "value: 85.0"), release)
    with pytest.raises(hub.PublishError, match="usage"):
        hub.check_model_card(text.replace("```python", "```text"), release)
    with pytest.raises(hub.PublishError, match="license"):
        hub.check_model_card(text.replace("license: mit", "license: apache-2.0"), release)


# ------------------------------------------------------------------------------------------------ loading by name


def _build_reference_repo(tmp, case, repo_id):
    case_config(case).save_pretrained(tmp / "config")
    return hub.build_repo(case_checkpoint(case), repo_id, tmp / "repo", config=tmp / "config" / "config.json",
                          remote_code_check=False)  # the test below does that check itself, by name


@pytest.fixture(scope="module")
def reference_repo(tmp_path_factory):
    """The tiny reference classifier, converted with a config.json and built into a repo for `ivmcl/pacavit-small`."""
    return _build_reference_repo(tmp_path_factory.mktemp("reference-repo"), CASE, REPO_ID)


@pytest.fixture(scope="module")
def reference_segmentation_repo(tmp_path_factory):
    """The tiny reference PaCa-head segmentor, built into a repo for `ivmcl/pacavit-small-ade20k`."""
    return _build_reference_repo(tmp_path_factory.mktemp("reference-seg-repo"), SEG_CASE, SEG_REPO_ID)


def test_built_repo_layout(reference_repo, reference_segmentation_repo):
    folder = reference_repo.folder
    assert reference_repo.files == sorted(hub.REPO_FILES)
    assert sorted(path.name for path in folder.iterdir()) == sorted(hub.REPO_FILES)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pacavit.PaCaViTConfig",
        "AutoModel": "modeling_pacavit.PaCaViTModel",
        "AutoBackbone": "modeling_pacavit.PaCaViTBackbone",
        "AutoModelForImageClassification": "modeling_pacavit.PaCaViTForImageClassification",
        "AutoImageProcessor": "image_processing_pacavit.PaCaViTImageProcessor",
    }
    seg_config = json.loads((reference_segmentation_repo.folder / "config.json").read_text())
    assert seg_config["auto_map"]["AutoModelForSemanticSegmentation"] == (
        "modeling_pacavit.PaCaViTForSemanticSegmentation"
    )
    assert "AutoModelForImageClassification" not in seg_config["auto_map"]
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoImageProcessor": "image_processing_pacavit.PaCaViTImageProcessor"}
    assert (folder / "model.safetensors").read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    for name in ("configuration_pacavit.py", "modeling_pacavit.py", "image_processing_pacavit.py"):
        assert (folder / name).read_text() == (ROOT / "src" / "paca_hf" / name).read_text()
    weights = load_file(folder / "model.safetensors")
    assert all(torch.equal(weights[key], value) for key, value in reference_repo.model.state_dict().items())
    text = (folder / "README.md").read_text()
    assert hub.sha256sum(case_checkpoint(CASE)) in text  # provenance: the exact file that was converted


def _hub_cache(tmp_path, repos: dict) -> Path:
    """The folders of `repos` ({repo id: folder}) laid out as the Hugging Face cache holds downloaded repos:
    `models--ORG--NAME/refs/main` holds the commit hash, `snapshots/<hash>/` the files."""
    cache = tmp_path / "home" / "hub"
    for index, (repo_id, folder) in enumerate(repos.items()):
        commit = f"{index:x}" * 40
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for path in folder.iterdir():
            (snapshot / path.name).write_bytes(path.read_bytes())
    return cache


_REMOTE_LOAD = """
import sys
try:
    import paca_hf
except ImportError as error:
    print("paca_hf is not importable:", error)
else:
    sys.exit("paca_hf must not be importable here")
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel

torch.set_num_threads(1)
model = AutoModel.from_pretrained("ivmcl/pacavit-small", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("ivmcl/pacavit-small", trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model)
assert type(processor).__module__.startswith("transformers_modules."), type(processor)
pixel_values = processor(images=Image.open("image.jpg"), return_tensors="pt")["pixel_values"]
with torch.no_grad():
    hidden = model(pixel_values).last_hidden_state
save_file({"pixel_values": pixel_values, "last_hidden_state": hidden.contiguous()}, "remote.safetensors")
for name in ("snippet.py", "segmentation_snippet.py"):
    print(f"=== {name} ===", flush=True)
    exec(compile(open(name).read(), name, "exec"), {"__name__": "__main__"})
"""


def test_loads_by_name_from_the_cache_with_and_without_paca_hf(
    reference_repo, reference_segmentation_repo, tmp_path, monkeypatch
):
    from transformers import AutoImageProcessor, AutoModel

    repos = {REPO_ID: reference_repo.folder, SEG_REPO_ID: reference_segmentation_repo.folder}
    cache = _hub_cache(tmp_path, repos)
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (150, 190, 3), dtype=np.uint8)).save(work / "image.jpg")
    # The cards' usage snippets load the cached repos by their Hub names.
    for (repo_id, folder), file in zip(repos.items(), ("snippet.py", "segmentation_snippet.py")):
        snippet = hub.extract_usage_snippet((folder / "README.md").read_text())
        assert f'repo_id = "{repo_id}"' in snippet
        (work / file).write_text(snippet)

    # 1. With paca_hf imported (no trust_remote_code), offline, from the cache.
    for name, value in {"HF_HOME": tmp_path / "home", "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = AutoModel.from_pretrained(REPO_ID).eval()
    processor = AutoImageProcessor.from_pretrained(REPO_ID)
    assert type(model).__module__ == "paca_hf.modeling_pacavit" and type(model).__name__ == "PaCaViTModel"
    assert type(processor).__module__ == "paca_hf.image_processing_pacavit"
    pixel_values = processor(images=Image.open(work / "image.jpg"), return_tensors="pt")["pixel_values"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            hidden = model(pixel_values).last_hidden_state
    finally:
        torch.set_num_threads(threads)

    # 2. Where paca_hf cannot be imported, with trust_remote_code=True; then the card's usage snippet.
    env = hub.hidden_package_environment(tmp_path / "sandbox")
    result = subprocess.run([sys.executable, "-c", _REMOTE_LOAD], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "paca_hf is not importable" in result.stdout
    remote = load_file(work / "remote.safetensors")
    assert torch.equal(remote["pixel_values"], pixel_values)
    assert torch.equal(remote["last_hidden_state"], hidden)
    printed = result.stdout.split("=== snippet.py ===")[1].split("=== segmentation_snippet.py ===")
    top5 = printed[0].strip().splitlines()
    assert len(top5) == 5 and all(re.fullmatch(r"LABEL_\d: \d\.\d{3}", line) for line in top5), top5
    shares = [re.fullmatch(r"LABEL_\d: (\d+\.\d)% of the pixels", line) for line in printed[1].strip().splitlines()]
    assert shares and all(shares)
    assert sum(float(match[1]) for match in shares) == pytest.approx(100, abs=0.1 * len(shares))


# ------------------------------------------------------------------------------------------------ publishing


class RecordingApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls, uploads nothing."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        files = sorted(path.name for path in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", kwargs["repo_id"], files, kwargs))


def _publish_script():
    spec = importlib.util.spec_from_file_location("publish_all", ROOT / "scripts" / "publish_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoints_dir(tmp_path_factory):
    """Full-size random checkpoints in the authors' format: a good PaCa-Tiny, a PaCa-Small file cut in half, and a
    tiny-teacher checkpoint with one tensor missing."""
    folder = tmp_path_factory.mktemp("checkpoints")
    tiny = folder / "IMNET_224_pacavit_tiny_p2cconv_100_0.pth"
    torch.save(random_state_dict(manifest()[TINY]), tiny)
    data = tiny.read_bytes()
    (folder / "IMNET_224_pacavit_small_p2cconv_100_0.pth").write_bytes(data[: len(data) // 2])
    teacher = random_state_dict(manifest()["pacavit_convmixer_tiny_100"])
    del teacher["stage1.0.attn.q.weight"]
    torch.save(teacher, folder / "pacavit_convmixer_tiny_100.pth")
    return folder


FAILING = ["pacavit_small_p2cconv_100_0", "pacavit_convmixer_tiny_100"]


def test_publish_uploads_only_repos_that_passed_every_check(checkpoints_dir, tmp_path, capsys):
    api = RecordingApi()
    argv = ["--checkpoints-dir", str(checkpoints_dir), "--work-dir", str(tmp_path)]
    for name in [TINY, *FAILING]:
        argv += ["--only", name]
    assert _publish_script().main(argv, api=api) == 1
    out, err = capsys.readouterr()
    # The good checkpoint: one repo created, exactly the checked files uploaded.
    assert [call[:2] for call in api.calls] == [("create_repo", "ivmcl/pacavit-tiny"),
                                                ("upload_folder", "ivmcl/pacavit-tiny")]
    assert api.calls[0][2] == {"exist_ok": True}
    _, _, files, kwargs = api.calls[1]
    assert files == sorted(hub.REPO_FILES) and sorted(kwargs["allow_patterns"]) == sorted(hub.REPO_FILES)
    folder = Path(kwargs["folder_path"])
    assert not any(path.suffix in (".bin", ".pt", ".pth", ".pkl") for path in folder.iterdir())
    assert json.loads((folder / "config.json").read_text())["num_clusters"] == [100, 100, 100, 0]
    hub.check_model_card((folder / "README.md").read_text(), hub.get_release(TINY))
    assert "uploaded ivmcl/pacavit-tiny" in out
    # The corrupt file and the checkpoint with a missing tensor: no call for their repos, and a clear error.
    assert "error: pacavit_small_p2cconv_100_0: nothing uploaded to ivmcl/pacavit-small" in err
    assert "truncated or corrupt" in err
    assert "error: pacavit_convmixer_tiny_100: nothing uploaded to ivmcl/pacavit-tiny-teacher" in err
    assert "missing from the checkpoint (1): pacavit.stages.0.layers.0.attention.query.weight" in err
    assert not (tmp_path / "repos" / "pacavit-small").exists()
    assert not (tmp_path / "repos" / "pacavit-tiny-teacher").exists()


def test_publish_dry_run_uploads_nothing(checkpoints_dir, tmp_path, capsys):
    api = RecordingApi()
    argv = ["--dry-run", "--checkpoints-dir", str(checkpoints_dir), "--work-dir", str(tmp_path), "--only", TINY]
    assert _publish_script().main(argv, api=api) == 0
    out = capsys.readouterr().out
    assert api.calls == []
    assert re.search(r"\[dry-run\] would upload ivmcl/pacavit-tiny \(7 files, \d+\.\d MB\):", out)
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert listed == sorted(hub.REPO_FILES)


def test_publish_downloads_from_release_urls_and_skips_unreleased(tmp_path, monkeypatch):
    requested = []

    def download(url, destination):
        requested.append((url, Path(destination).name))
        raise hub.PublishError("download refused in tests")

    api = RecordingApi()
    status = hub.publish(None, None, tmp_path, api=api, download=download, log=lambda message: None)
    assert api.calls == []
    released = [release for release in hub.convertible_releases() if release.url]
    assert requested == [(release.url, release.url.rsplit("/", 1)[-1]) for release in released]
    assert status["pacavit_convmixer_tiny_100"].startswith("skipped: not released")
    assert all(status[release.official_name] == "failed: download refused in tests" for release in released)
    # Named explicitly without a local file, the unreleased checkpoint is an error, not a silent skip.
    status = hub.publish(["pacavit_convmixer_tiny_100"], None, tmp_path, api=api, download=download,
                         log=lambda message: None)
    assert "no release URL" in status["pacavit_convmixer_tiny_100"] and api.calls == []
    # The real downloader never goes online in offline mode.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.PublishError, match="Offline"):
        hub.download_checkpoint(released[0].url, tmp_path / "file.pth")
    assert not (tmp_path / "file.pth").exists()


def test_publish_script_without_token_uploads_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert _publish_script().main(["--work-dir", str(tmp_path), "--only", TINY]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "downloads").exists()
