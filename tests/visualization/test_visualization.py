"""Cluster pictures (`paca_hf.visualization`, scripts/visualize_clusters.py) and cluster/label NMI
(`paca_hf.metrics.cluster_nmi`, scripts/cluster_nmi.py)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference import converted

from paca_hf import PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTModel
from paca_hf.images import open_image, reduce_labels
from paca_hf.metrics.cluster_nmi import (
    cluster_label_nmi,
    cluster_nmi_report,
    contingency_table,
    downsample_labels,
    format_table,
    load_examples,
    nmi_from_contingency,
    stage_cluster_nmi,
)
from paca_hf.visualization import (
    LABEL_HEIGHT,
    PADDING,
    cluster_palette,
    compute_cluster_assignments,
    hard_cluster_map,
    load_model_and_processor,
    render_clusters,
    top_clusters,
)


pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parents[2]
INPUT_SIZE = 64  # the saved image processor's crop: stage maps 16x16, 8x8, 4x4 (and 2x2 without clusters)


def run_script(name, *argv):
    """Run scripts/<name>.py as a command (with this checkout's package first on the path)."""
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, argv)], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error"), timeout=300,
    )  # fmt: skip


def grid_size(rows, top_k, cell):
    columns = 2 + top_k
    return columns * cell + (columns + 1) * PADDING, rows * (LABEL_HEIGHT + cell) + (rows + 1) * PADDING


@pytest.fixture(scope="module")
def processor():
    from paca_hf.image_processing_pacavit import PaCaViTImageProcessor

    return PaCaViTImageProcessor(
        size={"shortest_edge": INPUT_SIZE}, crop_size={"height": INPUT_SIZE, "width": INPUT_SIZE}
    )


@pytest.fixture(scope="module")
def segmenter():
    model = converted("seg_pacahead_conv", PaCaViTForSemanticSegmentation)
    model.config.id2label = {i: f"thing{i}" for i in range(model.config.num_labels)}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    return model


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory, processor):
    folder = tmp_path_factory.mktemp("classifier")
    converted("cls_conv_stagewise", PaCaViTForImageClassification).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory, processor, segmenter):
    folder = tmp_path_factory.mktemp("segmenter")
    segmenter.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    array = np.zeros((80, 96, 3), dtype=np.uint8)
    array[:, :48] = (200, 40, 40)
    array[20:60, 50:90] = (40, 40, 220)
    array += rng.integers(0, 30, array.shape, dtype=np.uint8)
    return Image.fromarray(array)


# ---------------------------------------------------------------------------------------------- script / picture


def test_script_writes_grid_png(classifier_folder, photo, tmp_path):
    image_path, output = tmp_path / "photo.jpg", tmp_path / "out" / "clusters.png"
    photo.save(image_path)
    argv = ["--model", classifier_folder, "--image", image_path, "--output", output]
    completed = run_script("visualize_clusters", *argv, "--top-k", "3", "--cell-size", "48")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"wrote {output}" in completed.stdout
    with Image.open(output) as picture:
        assert picture.format == "PNG"
        # cls_conv_stagewise has clusters [8, 8, 8, 0]: three rows; columns image | hard | 3 heatmaps.
        assert picture.size == grid_size(rows=3, top_k=3, cell=48)
    # what the script does, in-process, for one stage
    model, image_processor = load_model_and_processor(str(classifier_folder))
    picture = render_clusters(model, str(image_path), stage=2, top_k=1, image_processor=image_processor, cell_size=40)
    assert picture.size == grid_size(rows=1, top_k=1, cell=40)


def test_top_k_is_clamped_to_the_number_of_clusters_and_must_be_positive(classifier_folder, photo):
    model, image_processor = load_model_and_processor(str(classifier_folder))
    # cls_conv_stagewise has 8 clusters per stage: 500 heatmap columns would be 492 empty ones.
    picture = render_clusters(model, photo, top_k=500, image_processor=image_processor, cell_size=16)
    assert picture.size == grid_size(rows=3, top_k=8, cell=16)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="`top_k` must be >= 1"):
            render_clusters(model, photo, top_k=bad, image_processor=image_processor)


def test_a_upernet_folder_draws_its_paca_backbones_clusters(tmp_path, photo, processor):
    """A UperNet with a PaCa-ViT backbone, loaded the script's way: one row per backbone stage with clusters, no
    head row (UperNet's head has no clusters); the maps are the backbone's own assignments."""
    from tiny_configs import tiny_config
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(0)
    backbone = tiny_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, num_labels=3, hidden_size=16, auxiliary_channels=8)
    folder = tmp_path / "upernet"
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    model, image_processor = load_model_and_processor(str(folder))
    assert type(model).__name__ == "UperNetForSemanticSegmentation"
    picture = render_clusters(model, photo, top_k=2, image_processor=image_processor, cell_size=16)
    assert picture.size == grid_size(rows=3, top_k=2, cell=16)  # tiny_config's clusters: [4, 4, 4, 0]
    pixel_values = image_processor(photo, return_tensors="pt")["pixel_values"]
    # The same weights as a plain PaCaViTModel give the same assignments.
    plain = PaCaViTModel(model.backbone.config).eval()
    plain.load_state_dict(model.backbone.state_dict())
    with torch.no_grad():
        direct = plain(pixel_values, output_cluster_assignments=True).cluster_assignments
    assignments = compute_cluster_assignments(model.backbone, pixel_values)
    assert sorted(assignments) == ["stage1", "stage2", "stage3"]
    for index in (1, 2, 3):
        torch.testing.assert_close(assignments[f"stage{index}"], direct[index - 1].float())


def test_a_model_without_paca_clusters_is_a_value_error(photo):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    tiny = SegformerConfig(
        num_encoder_blocks=1,
        depths=[1],
        sr_ratios=[1],
        hidden_sizes=[8],
        num_attention_heads=[1],
        decoder_hidden_size=8,
        num_labels=2,
    )
    with pytest.raises(ValueError, match="model_type 'segformer'.* no clusters to draw"):
        render_clusters(SegformerForSemanticSegmentation(tiny), photo, top_k=1)


def test_script_refuses_an_output_that_is_a_folder(classifier_folder, photo, tmp_path):
    image_path = tmp_path / "photo.png"
    photo.save(image_path)
    completed = run_script(
        "visualize_clusters", "--model", classifier_folder, "--image", image_path, "--output", tmp_path
    )
    assert completed.returncode == 2 and "is a folder" in completed.stderr


def test_script_rejects_missing_file_and_non_image(classifier_folder, tmp_path):
    argv = ["--model", classifier_folder, "--image", tmp_path / "absent.jpg", "--output", tmp_path / "o.png"]
    completed = run_script("visualize_clusters", *argv)
    assert completed.returncode == 2 and "no such file" in completed.stderr
    assert not (tmp_path / "o.png").exists()
    # a file that is not an image: the decoder the script uses names the problem (the script shows it, exit 2)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match="cannot decode"):
        open_image(str(not_an_image))


def test_segmentation_folder_gets_a_head_row(segmenter_folder, photo):
    model, image_processor = load_model_and_processor(str(segmenter_folder))
    picture = render_clusters(model, photo, top_k=2, image_processor=image_processor, cell_size=32)
    # Stages with clusters [16, 16, 16, 0] plus the PaCa head.
    assert picture.size == grid_size(rows=4, top_k=2, cell=32)


def test_render_segmentation_includes_head_cluster_rows(segmenter, processor, photo):
    full = render_clusters(segmenter, photo, top_k=2, image_processor=processor, cell_size=32)
    head = render_clusters(segmenter, photo, stage="head", top_k=2, image_processor=processor, cell_size=32)
    stage1 = render_clusters(segmenter, photo, stage=1, top_k=2, image_processor=processor, cell_size=32)
    assert full.size == grid_size(rows=4, top_k=2, cell=32)
    assert head.size == stage1.size == grid_size(rows=1, top_k=2, cell=32)
    row_height = LABEL_HEIGHT + 32 + PADDING
    full_array = np.asarray(full)
    # The last row of the full picture is the head's row, the first one stage 1's.
    np.testing.assert_array_equal(full_array[3 * row_height :], np.asarray(head)[:])
    np.testing.assert_array_equal(full_array[: row_height + PADDING], np.asarray(stage1))
    assert not np.array_equal(np.asarray(head), np.asarray(stage1))


def test_render_rejects_stage_without_clusters(segmenter, photo, processor):
    with pytest.raises(ValueError, match="stage 4 has no clusters"):
        render_clusters(segmenter, photo, stage=4, image_processor=processor)
    with pytest.raises(ValueError, match="between 1 and 4"):
        render_clusters(segmenter, photo, stage=5, image_processor=processor)


def test_assignments_are_softmax_normalised_over_patches(segmenter, seed):
    pixel_values = torch.randn(2, 3, INPUT_SIZE, 48)
    assignments = compute_cluster_assignments(segmenter, pixel_values)
    assert list(assignments) == ["stage1", "stage2", "stage3", "head"]
    expected_shapes = {"stage1": (16, 12), "stage2": (8, 6), "stage3": (4, 3), "head": (16, 12)}
    for key, assignment in assignments.items():
        clusters = segmenter.config.num_labels if key == "head" else 16
        assert assignment.shape == (2, clusters, *expected_shapes[key])
        assert assignment.min() >= 0
        torch.testing.assert_close(assignment.sum(dim=(-2, -1)), torch.ones(2, clusters), atol=1e-5, rtol=0)
    with torch.no_grad():
        outputs = segmenter(pixel_values, output_cluster_assignments=True)
    assert outputs.cluster_assignments[3] is None
    torch.testing.assert_close(outputs.cluster_assignments[0], assignments["stage1"])
    # The hard map takes, per patch, the argmax over the cluster axis.
    hard = hard_cluster_map(assignments["stage2"])
    assert hard.shape == (2, 8, 6)
    np.testing.assert_array_equal(hard, assignments["stage2"].argmax(dim=1).numpy())


def test_palette_is_deterministic_and_distinct():
    np.testing.assert_array_equal(cluster_palette(5), cluster_palette(12)[:5])
    assert len({tuple(color) for color in cluster_palette(200)}) == 200


def test_top_clusters_rank_by_patches_won():
    hard = np.array([[2, 2, 0], [2, 1, 1]])
    assert top_clusters(hard, num_clusters=4, top_k=3) == [(2, 3), (1, 2), (0, 1)]
    assert top_clusters(hard, num_clusters=4, top_k=9) == [(2, 3), (1, 2), (0, 1), (3, 0)]


# ---------------------------------------------------------------------------------------------- NMI


def test_nmi_identical_partitions_up_to_relabelling_is_one():
    labels = np.array([[0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 3, 3]])
    relabelled = np.array([7, 3, 9, 5])[labels]
    assert cluster_label_nmi(relabelled, labels) == pytest.approx(1.0, abs=1e-12)
    assert cluster_label_nmi(labels, labels) == pytest.approx(1.0, abs=1e-12)


def test_nmi_hand_computed():
    clusters = np.array([[0, 0, 1, 1]])
    labels = np.array([[0, 0, 0, 1]])
    # Joint counts: (0,0)=2, (1,0)=1, (1,1)=1 of N=4. H(X) = log 2. H(Y) = -(3/4 log 3/4 + 1/4 log 1/4)
    # = 2 log 2 - 3/4 log 3. H(Y|X) = 1/2 * 0 + 1/2 * log 2, so I = H(Y) - H(Y|X) = 3/2 log 2 - 3/4 log 3.
    # NMI = 2I / (H(X) + H(Y)) = (3 log 2 - 3/2 log 3) / (3 log 2 - 3/4 log 3) = 0.34371...
    expected = (3 * math.log(2) - 1.5 * math.log(3)) / (3 * math.log(2) - 0.75 * math.log(3))
    assert cluster_label_nmi(clusters, labels) == pytest.approx(expected, abs=1e-9)
    assert cluster_label_nmi(labels, clusters) == pytest.approx(expected, abs=1e-9)
    np.testing.assert_array_equal(contingency_table(clusters, labels), [[2, 0], [1, 1]])


def test_nmi_independent_maps_is_zero():
    rows, cols = np.indices((4, 4))
    checkerboard = (rows + cols) % 2
    halves = (cols >= 2).astype(int)
    # Each (checker, half) pair covers exactly 4 of the 16 pixels = (8/16) * (8/16) * 16: independent.
    assert cluster_label_nmi(checkerboard, halves) < 1e-12
    assert cluster_label_nmi(halves, checkerboard) < 1e-12


def test_nmi_ignores_ignore_index_pixels():
    clusters = np.array([[0, 0, 1, 1, 1, 0, 1]])
    labels = np.array([[0, 0, 0, 1, 255, 255, 255]])
    expected = cluster_label_nmi(clusters[:, :4], labels[:, :4])
    assert cluster_label_nmi(clusters, labels) == pytest.approx(expected, abs=1e-12)
    assert cluster_label_nmi(clusters, labels, ignore_index=None) != pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="no pixel"):
        cluster_label_nmi(clusters, np.full_like(labels, 255))


def test_nmi_degenerate_cases():
    constant, varied = np.zeros((2, 3), int), np.array([[0, 1, 2], [0, 1, 2]])
    assert cluster_label_nmi(constant, constant + 4) == 1.0
    assert cluster_label_nmi(constant, varied) == 0.0
    assert cluster_label_nmi(varied, constant) == 0.0
    assert nmi_from_contingency([[3, 0], [0, 0]]) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        cluster_label_nmi(constant, varied[:, :2])


def test_downsample_labels_by_mode_and_reduce():
    labels = np.array(
        [
            [1, 1, 2, 2],
            [1, 3, 255, 255],
            [4, 4, 5, 6],
            [255, 255, 6, 5],
        ]
    )
    # Blocks of 2x2: mode of {1,1,1,3} = 1; {2,2} = 2 (ignored pixels skipped); {4,4} = 4; tie {5,6,6,5} -> 5.
    np.testing.assert_array_equal(downsample_labels(labels, (2, 2)), [[1, 2], [4, 5]])
    np.testing.assert_array_equal(downsample_labels(np.full((4, 4), 255), (2, 2)), np.full((2, 2), 255))
    np.testing.assert_array_equal(downsample_labels(np.array([[1, 2]]), (2, 4)), [[1, 1, 2, 2], [1, 1, 2, 2]])
    np.testing.assert_array_equal(reduce_labels(np.array([0, 1, 5, 255])), [255, 0, 4, 255])


def test_stage_nmi_pools_over_images_and_matches_own_labels(segmenter, seed):
    pixel_values = torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE)
    hard = hard_cluster_map(compute_cluster_assignments(segmenter, pixel_values)["stage3"])  # (2, 4, 4)
    labels = torch.from_numpy(np.stack([np.kron(h, np.ones((16, 16), dtype=np.int64)) for h in hard]))
    labels[:, :5, :5] = 255  # ignored
    scores, tables = stage_cluster_nmi(
        segmenter, [{"pixel_values": pixel_values, "labels": labels}], return_tables=True
    )
    assert list(scores) == ["stage1", "stage2", "stage3", "head"]
    assert scores["stage3"] == pytest.approx(1.0, abs=1e-12)
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    # Pooled over both images: every non-ignored downsampled pixel counted once.
    assert tables["stage1"].sum() == 2 * (16 * 16 - 1)  # the 5x5 ignored corner empties one 4x4 block
    assert tables["stage3"].sum() == 2 * 16 and tables["head"].shape[0] == segmenter.config.num_labels
    pooled = nmi_from_contingency(tables["stage2"])
    assert scores["stage2"] == pooled


def test_stage_nmi_on_ade20k_schema_examples(segmenter, processor):
    annotation = np.zeros((64, 64), dtype=np.uint8)
    annotation[:, 32:] = 1
    annotation[40:, :] = 3
    examples = [{"image": Image.new("RGB", (64, 64), (90, 120, 30)), "annotation": Image.fromarray(annotation)}] * 3
    scores = stage_cluster_nmi(segmenter, examples, processor, num_images=2, batch_size=2)
    assert set(scores) == {"stage1", "stage2", "stage3", "head"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())


@pytest.fixture(scope="module")
def mixed_size_scenes(tmp_path_factory):
    """A dataset folder of built-in scenes of five different shapes (two of one shape), in the ADE20k schema."""
    import datasets

    from paca_hf.data.scenes import features, scene_arrays

    pairs = [
        scene_arrays(i, size, seed=4)
        for i, size in enumerate([(80, 120), (96, 64), (64, 64), (80, 120), (50, 70), (70, 50)])
    ]
    folder = tmp_path_factory.mktemp("mixed") / "scenes"
    datasets.DatasetDict(
        {
            "validation": datasets.Dataset.from_dict(
                {
                    "image": [Image.fromarray(image) for image, _ in pairs],
                    "annotation": [Image.fromarray(annotation) for _, annotation in pairs],
                },
                features=features(),
            )
        }
    ).save_to_disk(str(folder))
    return folder


def test_cluster_nmi_of_mixed_sizes_at_the_default_batch_size(segmenter, mixed_size_scenes, tmp_path, capsys):
    """With a segmentation processor (aspect kept, no crop) images of different shapes share the default batches of
    4; the pooled tables are those of scoring one image at a time. The script scores such a folder too."""
    import datasets

    from paca_hf.training.segmentation import recipe_image_processor

    processor = recipe_image_processor((256, 64), reduce_labels=True)
    examples = datasets.load_from_disk(str(mixed_size_scenes))["validation"]
    scores, tables = stage_cluster_nmi(segmenter, examples, processor, return_tables=True)
    alone, alone_tables = stage_cluster_nmi(segmenter, examples, processor, batch_size=1, return_tables=True)
    assert set(tables) == set(alone_tables) == {"stage1", "stage2", "stage3", "head"}
    for key in tables:
        np.testing.assert_array_equal(tables[key], alone_tables[key], err_msg=key)
    assert scores == alone

    folder = tmp_path / "segmenter"
    segmenter.save_pretrained(folder)
    processor.save_pretrained(folder)
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_nmi_script", ROOT / "scripts" / "cluster_nmi.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # in this process: a subprocess would spend seconds importing
    assert script.main(["--model", str(folder), "--dataset", str(mixed_size_scenes), "--num-images", "6"]) == 0
    assert "scored 6 images" in capsys.readouterr().out


def test_cluster_nmi_report_builtin_with_random_baseline(segmenter_folder):
    model, image_processor = load_model_and_processor(str(segmenter_folder))
    examples = load_examples("builtin", num_images=2, image_size=64)
    result = cluster_nmi_report(model, image_processor, examples, num_images=2, compare_random=True, seed=0)
    assert set(result["nmi"]) == set(result["nmi_random_init"]) == {"stage1", "stage2", "stage3", "head"}
    assert result["num_images"] == 2 and result["num_clusters"]["head"] == 6 and result["random_init_seed"] == 0
    assert all(0.0 <= value <= 1.0 for value in result["nmi"].values())
    printed = format_table(result["nmi"], result["nmi_random_init"], result["num_clusters"])
    assert "NMI (trained)" in printed and "NMI (random init)" in printed and "head" in printed
    with pytest.raises(ValueError, match="no such folder"):
        load_examples("/no/such/folder")


def test_cluster_nmi_script(segmenter_folder, tmp_path):
    output = tmp_path / "nmi.json"
    completed = run_script(
        "cluster_nmi", "--model", segmenter_folder, "--num-images", "2", "--image-size", "64", "--output", output
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "NMI (trained)" in completed.stdout and "head" in completed.stdout
    result = json.loads(output.read_text())
    assert result["model"] == str(segmenter_folder) and result["dataset"] == "builtin"
    assert set(result["nmi"]) == {"stage1", "stage2", "stage3", "head"} and result["num_images"] == 2
    assert all(0.0 <= value <= 1.0 for value in result["nmi"].values())
