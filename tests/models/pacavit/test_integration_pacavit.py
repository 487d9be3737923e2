"""Converted reference models compute what the authors' code computed (../shared/reference, 1e-4)."""

import pytest
import torch
from reference import case_io, cases, converted

from paca_hf import PaCaViTBackbone, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation


TOLERANCE = 1e-4
CLASSIFIERS = ["cls_conv_stagewise", "cls_mlp_stagewise", "cls_conv_blockwise", "cls_teacher_convmixer"]


def inputs(io):
    return [io[key] for key in sorted(io) if key.startswith("input_")]


@pytest.mark.parametrize("chunk_size_feed_forward", [4096, 40], ids=["whole-maps", "mix-ffn-in-bands"])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_logits_match_authors(name, chunk_size_feed_forward):
    # 40 patches: bands of 1-2 rows in stage 1 (16 or 24 patches wide) and uneven bands in stage 2.
    model = converted(name, PaCaViTForImageClassification, chunk_size_feed_forward=chunk_size_feed_forward)
    io = case_io(name)
    assert sum(p.numel() for p in model.parameters()) == cases()[name]["num_parameters"]
    for index, pixel_values in enumerate(inputs(io)):
        with torch.no_grad():
            logits = model(pixel_values).logits
        torch.testing.assert_close(logits, io[f"output_{index}_logits"], atol=TOLERANCE, rtol=0)


def test_non_square_input_is_covered():
    shapes = [tuple(x.shape[-2:]) for x in inputs(case_io("cls_conv_stagewise"))]
    assert any(height != width for height, width in shapes)


def test_backbone_feature_maps_match_authors():
    name = "backbone_conv_downstream"
    model = converted(name, PaCaViTBackbone)
    io = case_io(name)
    assert sum(p.numel() for p in model.parameters()) == cases()[name]["num_parameters"]
    assert model.channels == [32, 64, 96, 128]
    with torch.no_grad():
        feature_maps = model(io["input_0"]).feature_maps
    assert len(feature_maps) == 4
    for index, feature_map in enumerate(feature_maps):
        torch.testing.assert_close(feature_map, io[f"output_0_feature_{index}"], atol=TOLERANCE, rtol=0)


def _undo_reference_training_step(model, pixel_values):
    """The reference checkpoint was saved after its one training-mode pass (num_batches_tracked == 1), whose
    BatchNorm momentum update (0.1) changed the running statistics that the eval outputs were computed with.
    Recompute that pass's batch statistics and invert the update: running_old = (running_new - 0.1 * batch) / 0.9."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(int(m.num_batches_tracked) == 1 for m in norms)
    batch_stats = {}

    def record(module, args, output):
        x = args[0]
        dims = [0] + list(range(2, x.ndim))
        batch_stats[module] = (x.mean(dims), x.var(dims, unbiased=True))

    hooks = [m.register_forward_hook(record) for m in norms]
    saved = {m: (m.running_mean.clone(), m.running_var.clone()) for m in norms}
    model.train()
    with torch.no_grad():
        model(pixel_values)
    for hook in hooks:
        hook.remove()
    for m in norms:
        mean, var = batch_stats[m]
        m.running_mean.copy_((saved[m][0] - m.momentum * mean) / (1 - m.momentum))
        m.running_var.copy_((saved[m][1] - m.momentum * var) / (1 - m.momentum))
    return model.eval()


def test_segmentor_eval_logits_match_authors():
    name = "seg_pacahead_conv"
    model = converted(name, PaCaViTForSemanticSegmentation)
    io = case_io(name)
    assert sum(p.numel() for p in model.parameters()) == cases()[name]["num_parameters"]
    _undo_reference_training_step(model, io["input_0"])
    for index, pixel_values in enumerate(inputs(io)):
        with torch.no_grad():
            outputs = model(pixel_values)
        # Logits at 1/4 of the input resolution, as Segformer returns them.
        assert outputs.logits.shape[-2:] == (pixel_values.shape[-2] // 4, pixel_values.shape[-1] // 4)
        torch.testing.assert_close(outputs.logits, io[f"output_{index}_logits"], atol=TOLERANCE, rtol=0)


def test_segmentor_training_loss_matches_authors():
    name = "seg_pacahead_conv"
    model = converted(name, PaCaViTForSemanticSegmentation, classifier_dropout_prob=0.0, drop_path_rate=0.0)
    io = case_io(name)
    model.train()
    outputs = model(io["input_0"], labels=io["train_labels"])
    torch.testing.assert_close(outputs.logits, io["train_logits"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(outputs.cluster_logits, io["train_cluster_logits"], atol=TOLERANCE, rtol=0)
    expected = io["train_loss_decode"] + io["train_loss_paca_aux"]
    torch.testing.assert_close(outputs.loss.reshape(1), expected, atol=TOLERANCE, rtol=0)
    outputs.loss.backward()
    assert model.decode_head.to_clusters.weight.grad.abs().sum() > 0
