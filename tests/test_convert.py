"""The checkpoint converter: exact conversion, strictness, untrusted pickles, atomic output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paca_hf import PaCaViTForImageClassification, PaCaViTForSemanticSegmentation
from paca_hf.convert import ConversionError, load_checkpoint
from paca_hf.hub import REPO_FILES, check_model_card, convert_checkpoint
from paca_hf.hub.model_card import custom_release
from reference import case_checkpoint, case_config, case_io

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_official_checkpoint.py"


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def write_config(tmp_path, name):
    folder = tmp_path / f"{name}-config"
    case_config(name).save_pretrained(folder)
    return folder / "config.json"


def test_cli_converts_reference_classifier_exactly(tmp_path):
    name = "cls_conv_stagewise"
    output = tmp_path / "converted"
    result = run_cli("--checkpoint", case_checkpoint(name), "--config", write_config(tmp_path, name),
                     "--output-dir", output, "--task", "image-classification")
    assert result.returncode == 0, result.stderr
    # A complete repo: weights, config, processor, remote code and the model card.
    assert sorted(p.name for p in output.iterdir()) == sorted(REPO_FILES)
    assert {"README.md", "config.json", "configuration_pacavit.py", "image_processing_pacavit.py",
            "model.safetensors", "modeling_pacavit.py", "preprocessor_config.json"} <= set(REPO_FILES)
    card = (output / "README.md").read_text()
    # Not an official release: the card says so and carries no published numbers.
    check_model_card(card, custom_release("classifier", str(output), case_checkpoint(name).name))
    assert "not one of the authors' released checkpoints" in card and "model-index" not in card
    assert "top-1" not in card.split("## Results")[1].split("## Conversion")[0]
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "pacavit" and len(config["id2label"]) == 10  # num_labels from the head
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_pacavit.PaCaViTForImageClassification"
    assert "pacavit.embeddings.projection.0.weight" in load_file(output / "model.safetensors")
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
    result = run_cli("--checkpoint", tmp_path / "evil.pth", "--config", "pacavit_tiny_p2cconv_100_0",
                     "--output-dir", output)
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
    result = run_cli("--checkpoint", tmp_path / "bad.pth", "--config", write_config(tmp_path, name),
                     "--output-dir", output)
    assert result.returncode != 0
    assert "pacavit.stages.1.layers.0.attention.query.weight" in result.stderr  # missing
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
    result = run_cli("--checkpoint", case_checkpoint("cls_conv_stagewise"), "--config", "pacavit_gigantic",
                     "--output-dir", tmp_path / "out")
    assert result.returncode != 0 and "neither an official name" in result.stderr


def test_convert_is_pure_and_below_the_hub():
    """`paca_hf.convert` turns state dicts into state dicts; saving, cards, checks and uploads live above it."""
    code = "import sys, paca_hf.convert; print(sorted(name for name in sys.modules if name.startswith('paca_hf.hub')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src")))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    source = (Path(__file__).resolve().parents[1] / "src" / "paca_hf" / "convert.py").read_text()
    assert "from .hub" not in source and "save_pretrained" not in source and "open(" not in source
