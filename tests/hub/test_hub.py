"""Hub repos of the released checkpoints: release table, remote code, model cards, loading by name from the Hugging
Face cache (with `import paca_hf`, and as remote code where paca_hf cannot be imported), and the publish path
against a recording stand-in for the Hub API (nothing touches the network)."""

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
from reference import (
    case_checkpoint,
    case_config,
    manifest,
    random_state_dict,
    require_reference,
    upernet_maskrcnn_manifest,
)
from safetensors.torch import load_file

from paca_hf import hub
from paca_hf.configuration_pacavit import OFFICIAL_NAMES
from paca_hf.file_utils import sha256sum


ROOT = Path(__file__).resolve().parents[2]
CASE = "cls_conv_stagewise"
REPO_ID = "ivmcl/pacavit-small"
SEG_CASE = "seg_pacahead_conv"
SEG_REPO_ID = "ivmcl/pacavit-small-ade20k"
TINY = "pacavit_tiny_p2cconv_100_0"


# ------------------------------------------------------------------------------------------------ release table


def test_release_table_matches_the_authors_releases():
    results = json.loads((require_reference() / "paper_results.json").read_text())
    published = {
        entry["name"]: entry
        for key in ("imagenet_1k_224", "ade20k_512", "coco_mask_rcnn_1x")
        for entry in results[key]
    }
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
    # All 26 releases have a repo id, each in the form transformers has for it.
    assert set(table) == set(OFFICIAL_NAMES) and len(table) == 26
    repo_ids = [release.repo_id for release in hub.RELEASES]
    assert len(set(repo_ids)) == len(repo_ids) == 26
    assert all(re.fullmatch(r"ivmcl/pacavit-[a-z0-9-]+", repo_id) for repo_id in repo_ids)
    forms = [release.form for release in hub.RELEASES]
    assert [forms.count(form) for form in ("classifier", "segmentor", "upernet", "detector")] == [13, 6, 3, 4]
    for size in ("tiny", "small", "base"):
        assert hub.get_release(f"ivmcl/pacavit-{size}-upernet-ade20k").official_name == (
            f"upernet_pacavit_{size}_p2cconv_100_0_512x512_160k_ade20k"
        )
        assert hub.get_release(f"ivmcl/pacavit-{size}-coco").official_name == (
            f"mask_rcnn_pacavit_{size}_p2cconv_100_0_mstrain_480_800_1x_coco"
        )
    assert hub.get_release("ivmcl/pacavit-small-mlp-coco").form == "detector"
    assert [hub.get_release(f"ivmcl/pacavit-{size}-upernet-ade20k").metric for size in ("tiny", "small", "base")] == [
        44.49,
        47.6,
        49.67,
    ]
    for name, repo in [
        (TINY, "pacavit-tiny"),
        ("pacavit_small_p2cconv_100_0", "pacavit-small"),
        ("pacavit_base_p2cconv_100_0", "pacavit-base"),
        ("pacavit_small_p2cmlp_100_0", "pacavit-small-mlp"),
        ("pacavit_convmixer_small_100", "pacavit-small-teacher"),
        ("pacavit_convmixer_base_100", "pacavit-base-teacher"),
        ("pacavit_small_p2cconv_100_blockwise", "pacavit-small-blockwise"),
        ("pacahead_pacavit_small_p2cconv_100_0_512x512_160k_ade20k", "pacavit-small-ade20k"),
    ]:
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
    assert len(lines) == 2 + 26
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 4 for line in lines)
    assert (
        "| `pacavit_small_p2cconv_100_0` | classifier (ImageNet-1k) | `ivmcl/pacavit-small` | 83.08% top-1 | "
        "[IMNET_224_pacavit_small_p2cconv_100_0.pth]"
        "(https://github.com/iVMCL/PaCaViT/releases/download/pacavit/IMNET_224_pacavit_small_p2cconv_100_0.pth) |"
    ) in lines
    assert any(line.startswith("| `pacavit_convmixer_tiny_100` |") and "not released" in line for line in lines)
    assert any(
        line.startswith("| `upernet_pacavit_base_p2cconv_100_0_512x512_160k_ade20k` | segmentor, UperNet")
        and "49.67 mIoU" in line
        for line in lines
    )
    assert any(
        line.startswith("| `mask_rcnn_pacavit_small_p2cmlp_100_0_mstrain_480_800_1x_coco` | detector, Mask")
        and "46.6 box AP" in line
        for line in lines
    )
    # The repo ids are not presented as links to existing Hub pages.
    assert "https://huggingface.co/" not in table


def test_readme_has_the_releases_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(hub.render_releases_table()) == 1, (
        "README.md must contain the output of paca_hf.hub.render_releases_table() "
        "(`python scripts/publish_all.py --list`) exactly once"
    )


# ------------------------------------------------------------------------------------------------ remote code


def test_remote_code_files_need_no_paca_hf(tmp_path):
    files = sorted(path.name for path in hub.remote_code_files())
    assert {"configuration_pacavit.py", "image_processing_pacavit.py", "modeling_pacavit.py", "releases.py"} <= set(
        files
    )
    assert files == sorted(name for name in hub.REPO_FILES if name.endswith(".py"))
    (tmp_path / "configuration_pacavit.py").write_text("from paca_hf.data import thing\n")
    (tmp_path / "modeling_pacavit.py").write_text("from .configuration_pacavit import X\nfrom ..up import y\n")
    (tmp_path / "image_processing_pacavit.py").write_text("import scipy\nfrom .helpers import z\n")
    with pytest.raises(hub.PublishError) as error:
        hub.remote_code_files(tmp_path)
    message = str(error.value)
    for problem in ("'paca_hf.data'", "from ..up", "'scipy'", "helpers.py is imported but does not exist"):
        assert problem in message


def test_torchvision_must_stay_optional_in_remote_code(tmp_path):
    (tmp_path / "configuration_pacavit.py").write_text("import json\n")
    (tmp_path / "modeling_pacavit.py").write_text(
        "try:\n    import torchvision\nexcept ImportError:\n    torchvision = None\n"
    )
    (tmp_path / "image_processing_pacavit.py").write_text("from torchvision.transforms import v2\n")
    with pytest.raises(hub.PublishError) as error:
        hub.remote_code_files(tmp_path)
    message = str(error.value)
    assert "image_processing_pacavit.py:1 imports from 'torchvision.transforms' outside `try" in message
    assert "modeling_pacavit.py" not in message  # the guarded import is fine


# ------------------------------------------------------------------------------------------------ model cards


def _manifest_entry(name):
    return {**manifest(), **upernet_maskrcnn_manifest()}[name]


@pytest.mark.parametrize("release", hub.RELEASES, ids=lambda release: release.repo_name)
def test_model_card_metadata(release):
    entry = _manifest_entry(release.official_name)
    num_parameters = entry["num_parameters_backbone"] if release.form == "backbone" else entry["num_parameters"]
    card = hub.render_model_card(release, num_parameters=num_parameters, checkpoint_sha256="ab" * 32)
    hub.check_model_card(str(card), release)
    card = ModelCard(str(card))
    data = card.data
    assert data.license == "mit" and data.library_name == "transformers" and "pacavit" in data.tags
    if release.form == "classifier":
        assert data.pipeline_tag == "image-classification" and data.datasets == ["imagenet-1k"]
        assert data.base_model is None
    elif release.form == "backbone":
        assert data.pipeline_tag == "image-feature-extraction" and data.datasets == ["detection-datasets/coco"]
        assert data.base_model == hub.get_release(release.initialized_from).repo_id
        # What it is, what is left out and why, and the whole detector's published result.
        assert "only the backbone" in card.text and "Not included" in card.text and "no Mask R-CNN" in card.text
        assert release.result in card.text and "UperNetForSemanticSegmentation" in card.text
    elif release.form == "detector":
        assert data.pipeline_tag == "image-segmentation" and data.datasets == ["detection-datasets/coco"]
        assert data.base_model == hub.get_release(release.initialized_from).repo_id
        assert "instance-segmentation" in data.tags and release.result in card.text  # the box / mask AP
        snippet = hub.extract_usage_snippet(str(card))
        assert 'pipeline("object-detection"' in snippet and 'subtask="instance"' in snippet
    else:
        assert data.pipeline_tag == "image-segmentation" and data.datasets == ["scene_parse_150"]
        assert data.base_model == hub.get_release(release.initialized_from).repo_id
    if release.form == "upernet":
        assert "upernet" in data.tags and "custom_code" not in data.tags
    assert f"{num_parameters:,}" in card.text and str(release.gmacs) in card.text
    assert "PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers" in card.text
    if release.metric is None and release.form != "detector":  # no model-index
        assert "model-index" not in data.to_dict()
        assert (release.result or "not published") in card.text
        return
    name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    if release.form == "detector":  # box and mask AP, as published
        entry = next(
            entry
            for entry in json.loads((require_reference() / "paper_results.json").read_text())["coco_mask_rcnn_1x"]
            if entry["name"] == release.official_name
        )
        assert name == release.repo_name
        assert [
            (result.metric_type, result.metric_value, result.task_type, result.dataset_type) for result in results
        ] == [
            ("box_ap", entry["box_ap"], "object-detection", "detection-datasets/coco"),
            ("mask_ap", entry["mask_ap"], "image-segmentation", "detection-datasets/coco"),
        ]
        with pytest.raises(hub.PublishError, match="model-index"):
            hub.check_model_card(str(card).replace(f"value: {entry['mask_ap']}", "value: 50.0"), release)
        return
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
    return hub.build_repo(
        case_checkpoint(case), repo_id, tmp / "repo", config=tmp / "config" / "config.json", remote_code_check=False
    )  # the test below does that check itself, by name


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
    assert sha256sum(case_checkpoint(CASE)) in text  # provenance: the exact file that was converted


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
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_LOAD], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
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
    from paca_hf.hub import publish_cli

    return publish_cli


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
    assert [call[:2] for call in api.calls] == [
        ("create_repo", "ivmcl/pacavit-tiny"),
        ("upload_folder", "ivmcl/pacavit-tiny"),
    ]
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
    assert (
        "missing from the checkpoint (1): stage1.0.attn.q.weight" in err
    )  # named as the authors' checkpoint names it
    assert not (tmp_path / "repos" / "pacavit-small").exists()
    assert not (tmp_path / "repos" / "pacavit-tiny-teacher").exists()


def test_publish_dry_run_uploads_nothing(checkpoints_dir, tmp_path, capsys):
    api = RecordingApi()
    argv = ["--dry-run", "--checkpoints-dir", str(checkpoints_dir), "--work-dir", str(tmp_path), "--only", TINY]
    assert _publish_script().main(argv, api=api) == 0
    out = capsys.readouterr().out
    assert api.calls == []
    assert re.search(rf"\[dry-run\] would upload ivmcl/pacavit-tiny \({len(hub.REPO_FILES)} files, \d+\.\d MB\):", out)
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
    released = [release for release in hub.RELEASES if release.url]
    assert requested == [(release.url, release.url.rsplit("/", 1)[-1]) for release in released]
    assert status["pacavit_convmixer_tiny_100"].startswith("skipped: not released")
    assert all(status[release.official_name] == "failed: download refused in tests" for release in released)
    # Named explicitly without a local file, the unreleased checkpoint is an error, not a silent skip.
    status = hub.publish(
        ["pacavit_convmixer_tiny_100"], None, tmp_path, api=api, download=download, log=lambda message: None
    )
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


def test_model_cards_folder_holds_every_rendered_card(tmp_path):
    """`model_cards/` is what `python scripts/publish_all.py --write-cards model_cards` writes."""
    written = hub.write_release_cards(tmp_path)
    assert len(written) == 26
    committed = sorted(path.name for path in (ROOT / "model_cards").glob("*.md"))
    assert committed == sorted(path.name for path in written), "regenerate with publish_all.py --write-cards"
    for path in written:
        assert (ROOT / "model_cards" / path.name).read_text() == path.read_text(), (
            f"model_cards/{path.name} is stale: run python scripts/publish_all.py --write-cards model_cards"
        )
        ModelCard(path.read_text(), ignore_metadata_errors=False)


class FailingUploadApi(RecordingApi):
    """Fails the upload of one repo, as the Hub does offline or with a bad token."""

    def __init__(self, failing_repo):
        super().__init__()
        self.failing_repo = failing_repo

    def upload_folder(self, **kwargs):
        if kwargs["repo_id"] == self.failing_repo:
            raise OSError("offline: cannot reach https://huggingface.co")
        super().upload_folder(**kwargs)


def test_publish_goes_on_after_a_failed_upload_and_reports_every_release(checkpoints_dir, tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    tiny = (checkpoints_dir / "IMNET_224_pacavit_tiny_p2cconv_100_0.pth").read_bytes()
    (folder / "IMNET_224_pacavit_tiny_p2cconv_100_0.pth").write_bytes(tiny)
    # The same weights published twice under two names: the first upload fails, the second must still happen.
    teacher = random_state_dict(manifest()["pacavit_convmixer_tiny_100"])
    torch.save(teacher, folder / "pacavit_convmixer_tiny_100.pth")
    api = FailingUploadApi("ivmcl/pacavit-tiny")
    argv = [
        "--checkpoints-dir",
        str(folder),
        "--work-dir",
        str(tmp_path / "work"),
        "--only",
        TINY,
        "--only",
        "pacavit_convmixer_tiny_100",
    ]
    assert _publish_script().main(argv, api=api) == 1
    out, err = capsys.readouterr()
    assert "error: pacavit_tiny_p2cconv_100_0: nothing uploaded to ivmcl/pacavit-tiny: offline" in err
    assert [call[:2] for call in api.calls] == [
        ("create_repo", "ivmcl/pacavit-tiny"),
        ("create_repo", "ivmcl/pacavit-tiny-teacher"),
        ("upload_folder", "ivmcl/pacavit-tiny-teacher"),
    ]
    summary = out.splitlines()[-3:]
    assert re.fullmatch(
        r"pacavit_tiny_p2cconv_100_0 +failed: offline: cannot reach https://huggingface.co", summary[0]
    ), summary
    assert re.fullmatch(r"pacavit_convmixer_tiny_100 +uploaded", summary[1]), summary
    assert summary[2] == "1 uploaded, 0 skipped, 1 failed: pacavit_tiny_p2cconv_100_0"


_BACKBONE_SNIPPET_RUN = """
import sys
try:
    import paca_hf
except ImportError:
    pass
else:
    sys.exit("paca_hf must not be importable here")
exec(compile(open("snippet.py").read(), "snippet.py", "exec"), {"__name__": "__main__"})
"""


def test_backbone_repo_from_a_detector_checkpoint(tmp_path):
    """A Mask R-CNN-layout checkpoint (the reference backbone under `backbone.`, plus neck / RPN / RoI tensors)
    becomes a PaCaViTBackbone repo: features as the authors' model, the rest reported, remote code and the card's
    snippet (a transformers head over the backbone) working where paca_hf is not installed."""
    from safetensors.torch import load_file as load_io

    backbone = torch.load(case_checkpoint("backbone_conv_downstream"), weights_only=True)
    detector = {f"backbone.{key}": value for key, value in backbone.items()}
    detector.update(
        {
            "neck.lateral_convs.0.conv.weight": torch.zeros(8, 32, 1, 1),
            "neck.fpn_convs.0.conv.weight": torch.zeros(8, 8, 3, 3),
            "rpn_head.rpn_conv.weight": torch.zeros(8, 8, 3, 3),
            "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 16),
        }
    )
    torch.save({"meta": {"epoch": 12}, "state_dict": detector}, tmp_path / "mask_rcnn.pth")
    case_config("backbone_conv_downstream").save_pretrained(tmp_path / "config")
    folder = tmp_path / "repo"
    model = hub.convert_checkpoint(
        tmp_path / "mask_rcnn.pth",
        tmp_path / "config" / "config.json",
        folder,
        task="backbone",
        remote_code_check=True,
    )
    assert type(model).__name__ == "PaCaViTBackbone"
    card = (folder / "README.md").read_text()
    assert "neck. (2 tensors), rpn_head. (1 tensors), roi_head. (1 tensors)" in card
    io = load_io(require_reference() / "backbone_conv_downstream.io.safetensors")
    with torch.no_grad():
        features = model(io["input_0"]).feature_maps
    for stage, feature in enumerate(features):
        torch.testing.assert_close(feature, io[f"output_0_feature_{stage}"], atol=1e-4, rtol=0)
    snippet = hub.extract_usage_snippet(card)  # loads the folder (a custom conversion's repo id is its path)
    (tmp_path / "snippet.py").write_text(snippet)
    result = subprocess.run(
        [sys.executable, "-c", _BACKBONE_SNIPPET_RUN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=hub.hidden_package_environment(tmp_path / "sandbox"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[:4] == [
        "stage1 (1, 32, 128, 192)",
        "stage2 (1, 64, 64, 96)",
        "stage3 (1, 96, 32, 48)",
        "stage4 (1, 128, 16, 24)",
    ]
    assert lines[4] == "torch.Size([1, 19, 512, 768])"
