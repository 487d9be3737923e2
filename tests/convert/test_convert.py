"""The checkpoint converter: exact conversion, strictness, untrusted pickles, atomic output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import case_checkpoint, case_config, case_io
from safetensors.torch import load_file

from paca_hf import PaCaViTForImageClassification, PaCaViTForSemanticSegmentation
from paca_hf.convert import ConversionError, load_checkpoint
from paca_hf.hub import REPO_FILES, check_model_card, convert_checkpoint
from paca_hf.hub.model_card import custom_release


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_official_checkpoint.py"


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def write_config(tmp_path, name):
    folder = tmp_path / f"{name}-config"
    case_config(name).save_pretrained(folder)
    return folder / "config.json"


def test_cli_converts_reference_classifier_exactly(tmp_path):
    name = "cls_conv_stagewise"
    output = tmp_path / "converted"
    result = run_cli(
        "--checkpoint",
        case_checkpoint(name),
        "--config",
        write_config(tmp_path, name),
        "--output-dir",
        output,
        "--task",
        "image-classification",
    )
    assert result.returncode == 0, result.stderr
    # A complete repo: weights, config, processor, remote code and the model card.
    assert sorted(p.name for p in output.iterdir()) == sorted(REPO_FILES)
    assert {
        "README.md",
        "config.json",
        "configuration_pacavit.py",
        "image_processing_pacavit.py",
        "model.safetensors",
        "modeling_pacavit.py",
        "preprocessor_config.json",
    } <= set(REPO_FILES)
    card = (output / "README.md").read_text()
    # Not an official release: the card says so and carries no published numbers.
    check_model_card(card, custom_release("classifier", str(output), case_checkpoint(name).name))
    assert "not one of the authors' released checkpoints" in card and "model-index" not in card
    assert "top-1" not in card.split("## Results")[1].split("## Conversion")[0]
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "pacavit" and len(config["id2label"]) == 10  # num_labels from the head
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_pacavit.PaCaViTForImageClassification"
    assert "pacavit.embeddings.conv1.weight" in load_file(output / "model.safetensors")
    model = PaCaViTForImageClassification.from_pretrained(output).eval()
    io = case_io(name)
    with torch.no_grad():
        torch.testing.assert_close(model(io["input_1"]).logits, io["output_1_logits"], atol=1e-4, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted.")]  # no temporary folders left


def test_segmentor_converts_with_mmseg_wrapper(tmp_path):
    name = "seg_pacahead_conv"
    source = torch.load(case_checkpoint(name), weights_only=True)
    assert set(source) == {"meta", "state_dict"}
    # mmseg checkpoints may carry an auxiliary head the PaCa segmentor does not use: reported, not converted.
    source["state_dict"]["auxiliary_head.conv_seg.weight"] = torch.zeros(6, 8, 1, 1)
    checkpoint = tmp_path / "segmentor.pth"
    torch.save(source, checkpoint)
    model = convert_checkpoint(checkpoint, case_config(name), tmp_path / "out", task="semantic-segmentation")
    assert isinstance(model, PaCaViTForSemanticSegmentation)
    reloaded = PaCaViTForSemanticSegmentation.from_pretrained(tmp_path / "out")
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "state_dict_ema", "module"])
def test_usual_wrappers_are_read(tmp_path, wrapper):
    state_dict = torch.load(case_checkpoint("cls_mlp_stagewise"), weights_only=True)
    if wrapper == "module":
        wrapped = {f"module.{key}": value for key, value in state_dict.items()}
    else:
        wrapped = {wrapper: state_dict, "epoch": 300}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    loaded = load_checkpoint(tmp_path / "wrapped.pth")
    assert loaded.keys() == state_dict.keys()


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_needs_code_is_refused_before_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit()}, tmp_path / "evil.pth")
    output = tmp_path / "out"
    result = run_cli(
        "--checkpoint", tmp_path / "evil.pth", "--config", "pacavit_tiny_p2cconv_100_0", "--output-dir", output
    )
    assert result.returncode != 0
    assert "Refused" in result.stderr and "run code" in result.stderr
    assert not (tmp_path / "pwned").exists() and not output.exists()


def test_truncated_file_is_reported(tmp_path):
    data = case_checkpoint("cls_conv_stagewise").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(ConversionError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_mismatched_checkpoint_names_keys_and_writes_nothing(tmp_path):
    name = "cls_conv_stagewise"
    state_dict = torch.load(case_checkpoint(name), weights_only=True)
    del state_dict["stage2.0.attn.q.weight"]
    state_dict["stage9.0.attn.q.weight"] = torch.zeros(3)
    state_dict["stage1.0.mlp.fc1.weight"] = torch.zeros(7, 7)
    torch.save(state_dict, tmp_path / "bad.pth")
    output = tmp_path / "out"
    result = run_cli(
        "--checkpoint", tmp_path / "bad.pth", "--config", write_config(tmp_path, name), "--output-dir", output
    )
    assert result.returncode != 0
    # Every tensor in the checkpoint's own names, the missing one too (it is the file that lacks it).
    assert "stage2.0.attn.q.weight" in result.stderr and "pacavit." not in result.stderr  # missing
    assert "stage9.0.attn.q.weight" in result.stderr  # unexpected
    assert "stage1.0.mlp.fc1.weight: checkpoint (7, 7)" in result.stderr  # shape
    assert not output.exists()
    assert list(tmp_path.glob(".out.*")) == []


def test_failed_conversion_keeps_an_existing_good_output(tmp_path):
    name = "cls_conv_stagewise"
    output = tmp_path / "out"
    config = write_config(tmp_path, name)
    assert run_cli("--checkpoint", case_checkpoint(name), "--config", config, "--output-dir", output).returncode == 0
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    wrong = torch.load(case_checkpoint("cls_mlp_stagewise"), weights_only=True)  # another architecture
    torch.save(wrong, tmp_path / "wrong.pth")
    result = run_cli("--checkpoint", tmp_path / "wrong.pth", "--config", config, "--output-dir", output)
    assert result.returncode != 0 and "does not match the model" in result.stderr
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


def test_conversion_replaces_output_only_when_complete(tmp_path, monkeypatch):
    name = "cls_conv_stagewise"
    output = tmp_path / "out"
    convert_checkpoint(case_checkpoint(name), case_config(name), output)
    before = (output / "model.safetensors").read_bytes()

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PaCaViTForImageClassification, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(case_checkpoint(name), case_config(name), output)
    assert (output / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unknown_config_is_an_error(tmp_path):
    result = run_cli(
        "--checkpoint",
        case_checkpoint("cls_conv_stagewise"),
        "--config",
        "pacavit_gigantic",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.returncode != 0 and "neither an official name" in result.stderr


def test_convert_is_pure_and_below_the_hub():
    """`paca_hf.convert` turns state dicts into state dicts; saving, cards, checks and uploads live above it."""
    code = "import sys, paca_hf.convert; print(sorted(name for name in sys.modules if name.startswith('paca_hf.hub')))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src")),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    source = (Path(__file__).resolve().parents[2] / "src" / "paca_hf" / "convert.py").read_text()
    assert "from .hub" not in source and "save_pretrained" not in source and "open(" not in source


def test_output_dir_holding_other_files_or_the_checkpoint_is_never_deleted(tmp_path):
    """The output folder is replaced as a whole, so only a folder that is an earlier model folder (or loses nothing)
    may be replaced: a folder of the user's own files, the folder holding the checkpoint, or a file is refused
    before anything is written, and left byte for byte as it was."""
    import shutil

    name = "cls_conv_stagewise"
    project = tmp_path / "project"
    project.mkdir()
    checkpoint = shutil.copy(case_checkpoint(name), project / "model.pth")
    (project / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="lies inside the output folder"):
        convert_checkpoint(checkpoint, case_config(name), project)
    with pytest.raises(
        FileExistsError,
        match=r"already holds files that this output does not replace \(model\.pth, "
        r"notes\.txt\)",
    ):
        convert_checkpoint(case_checkpoint(name), case_config(name), project)
    assert sorted(p.name for p in project.iterdir()) == ["model.pth", "notes.txt"]
    assert (project / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no temporary folder left behind

    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    with pytest.raises(FileExistsError, match="is not a folder"):
        convert_checkpoint(case_checkpoint(name), case_config(name), a_file)
    assert a_file.read_text() == "keep"

    # An earlier model folder is what the converter replaces.
    convert_checkpoint(case_checkpoint(name), case_config(name), tmp_path / "out")
    convert_checkpoint(case_checkpoint(name), case_config(name), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_reports_an_unreadable_config_json(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    result = run_cli(
        "--checkpoint",
        case_checkpoint("cls_conv_stagewise"),
        "--config",
        tmp_path / "config.json",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not a readable transformers config.json" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, deleted",
    [
        (
            "cls_teacher_convmixer",
            [
                "patch_embed.proj.0.weight",
                "stage2.0.attn.cluster_norm.bias",
                "paca_teacher.block1.0.0.fn.2.running_mean",
                "paca_teacher.lateral2.0.weight",
                "paca_teacher.to_clusters3.weight",
                "norm4.bias",
                "head.weight",
            ],
        ),
        (
            "seg_pacahead_conv",
            [
                "backbone.transition1.norm.weight",
                "backbone.stage1.1.mlp.dwconv.dwconv.bias",
                "backbone.stage2.0.attn.clustering.clustering.4.weight",
                "decode_head.k.2.weight",
                "decode_head.clustering.1.bias",
                "decode_head.conv_seg.weight",
            ],
        ),
        (
            "seg_upernet_conv",
            [
                "backbone.stage3.2.attn.proj.weight",
                "decode_head.psp_modules.3.1.bn.running_var",
                "decode_head.fpn_bottleneck.conv.weight",
                "auxiliary_head.convs.0.bn.bias",
                "auxiliary_head.conv_seg.weight",
            ],
        ),
    ],
)
def test_missing_tensors_are_named_in_the_checkpoints_own_keys(name, deleted):
    from paca_hf.convert import build_config, build_model, convert_source

    source = load_checkpoint(case_checkpoint(name))
    config = case_config(name)
    task = "image-classification" if name.startswith("cls") else "semantic-segmentation"
    assert set(deleted) <= set(source)
    for key in deleted:
        del source[key]
    with pytest.raises(ConversionError) as error:
        convert_source(source, config, task)
    message = str(error.value)
    assert f"missing from the checkpoint ({len(deleted)})" in message
    for key in deleted:
        assert key in message, key
    # Never our name for them (the model's own parameter names differ from the authors' everywhere).
    ours = build_model(build_config(config, source, task), task).state_dict()
    assert not [key for key in ours if key in message and key not in deleted]


@pytest.mark.parametrize(
    "name",
    [
        "cls_conv_stagewise",
        "cls_mlp_stagewise",
        "cls_teacher_convmixer",
        "seg_pacahead_conv",
        "seg_upernet_conv",
        "det_maskrcnn_conv",
    ],
)
def test_every_reference_key_is_named_back_as_the_checkpoint_names_it(name):
    from paca_hf.convert import DETECTOR_PREFIXES, authors_key, rename_key

    source = load_checkpoint(case_checkpoint(name))
    clustering_type = case_config(name).clustering_type if name != "det_maskrcnn_conv" else "conv"
    upernet = name == "seg_upernet_conv"
    prefix = "backbone." if any(key.startswith("backbone.") for key in source) else ""
    for key in source:
        if key.startswith(DETECTOR_PREFIXES) or key.endswith("blur_filter"):
            continue
        assert authors_key(rename_key(key, clustering_type, upernet=upernet), clustering_type, upernet, prefix) == key
