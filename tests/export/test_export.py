"""Export at any image size: torch.export, the dynamo ONNX exporter (run in onnxruntime), the TorchScript ONNX exporter
and torch.compile(dynamic=True), each checked against the eager model at sizes other than the export example."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from tiny_configs import tiny_config as shared_tiny_config
from torch.export import Dim

from paca_hf import PaCaViTBackbone, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTModel


pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
# Batch, height, width other than the example's; odd sizes and non-square maps too.
SIZES = [(1, 96, 96), (3, 224, 224), (1, 320, 320), (1, 512, 512), (2, 100, 164)]
DYNAMIC = {"pixel_values": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}

BATCH_OF_ONE = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
# Batch 3, and heights or widths of 32 px (a map 1 patch high or wide in the last stage), below the 33 px that an
# export once required.
SIZES_AFTER_BATCH_OF_ONE = [(3, 64, 64), (2, 32, 64), (1, 72, 32), (3, 100, 164)]


def tiny_config():
    # Banded Mix-FFN (64 patches per band), clusters in stages 1-3, patch-to-patch attention in stage 4.
    return shared_tiny_config(
        hidden_sizes=[16, 32, 48, 64],
        num_attention_heads=[1, 2, 2, 4],
        clustering_kernel_size=7,
        num_labels=5,
        chunk_size_feed_forward=64,
    )


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return PaCaViTForSemanticSegmentation(tiny_config()).eval()


def inputs(batch, height, width):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width + batch))


def test_torch_export_with_dynamic_batch_height_and_width(segmenter):
    program = torch.export.export(segmenter, (), {"pixel_values": EXAMPLE}, dynamic_shapes=DYNAMIC)
    exported = program.module()
    for size in SIZES:
        pixel_values = inputs(*size)
        with torch.no_grad():
            expected = segmenter(pixel_values)
            actual = exported(pixel_values=pixel_values)
        torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=0, msg=str(size))
        torch.testing.assert_close(actual.cluster_logits, expected.cluster_logits, atol=1e-4, rtol=0, msg=str(size))


def test_torch_export_with_labels_gives_the_eager_loss(segmenter):
    """The loss traces too (no branch on the labels' values): exported with labels at one size, it equals the eager
    loss at others, including a batch whose pixels are all ignored (loss 0, not NaN)."""

    def labels_for(pixel_values, ignored_rows):
        batch, _, height, width = pixel_values.shape
        generator = torch.Generator().manual_seed(0)
        labels = torch.randint(0, segmenter.config.num_labels, (batch, height, width), generator=generator)
        labels[:, :ignored_rows] = segmenter.config.semantic_loss_ignore_index
        return labels

    dynamic = {
        **DYNAMIC,
        "labels": {0: DYNAMIC["pixel_values"][0], 1: DYNAMIC["pixel_values"][2], 2: DYNAMIC["pixel_values"][3]},
    }
    program = torch.export.export(
        segmenter, (), {"pixel_values": EXAMPLE, "labels": labels_for(EXAMPLE, 3)}, dynamic_shapes=dynamic
    )
    for size, ignored_rows in ((SIZES[0], 0), (SIZES[-1], 5), (SIZES[-1], 10_000)):
        pixel_values = inputs(*size)
        labels = labels_for(pixel_values, ignored_rows)
        with torch.no_grad():
            expected = segmenter(pixel_values, labels=labels).loss
            actual = program.module()(pixel_values=pixel_values, labels=labels).loss
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=str(size))
        assert (expected == 0) == (ignored_rows >= size[-2])


def test_dynamo_onnx_export_runs_in_onnxruntime_at_any_size(segmenter, tmp_path):
    """Exported from an example batch of 1 (the batch-2 example is the README's), the ONNX graph runs at other batch
    sizes and image sizes, down to a 1 x 1 map in the last stage, equal to the eager model. (The exporter treats sizes
    0 and 1 like any other, as torchvision's ResNet exports; the model's convolutions no longer guard on them.)"""
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        segmenter,
        (),
        str(path),
        kwargs={"pixel_values": BATCH_OF_ONE},
        dynamo=True,
        dynamic_shapes=DYNAMIC,
        input_names=["pixel_values"],
        output_names=["logits", "cluster_logits"],
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [*SIZES, *SIZES_AFTER_BATCH_OF_ONE, (2, 32, 32)]:
        pixel_values = inputs(*size)
        with torch.no_grad():
            expected = segmenter(pixel_values)
        logits, cluster_logits = session.run(["logits", "cluster_logits"], {"pixel_values": pixel_values.numpy()})
        np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=0, err_msg=str(size))
        np.testing.assert_allclose(
            cluster_logits, expected.cluster_logits.numpy(), atol=1e-4, rtol=0, err_msg=str(size)
        )


def test_torchscript_onnx_export_with_dynamic_axes(tmp_path):
    torch.manual_seed(0)
    classifier = PaCaViTForImageClassification(tiny_config()).eval()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(
            classifier,
            (EXAMPLE,),
            str(path),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in SIZES[:3]:
        pixel_values = inputs(*size)
        with torch.no_grad():
            expected = classifier(pixel_values).logits.numpy()
        (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0, err_msg=str(size))


def test_torch_compile_with_dynamic_shapes():
    torch.manual_seed(0)
    config = tiny_config()
    config.hidden_sizes, config.depths, config.num_attention_heads = [16, 32], [1, 1], [1, 2]
    config.mlp_ratios, config.num_clusters, config.clustering_interval = [2, 2], [4, 0], [0, 0]
    classifier = PaCaViTForImageClassification(config).eval()
    compiled = torch.compile(classifier, dynamic=True)
    for size in [(2, 64, 64), (1, 96, 80)]:
        pixel_values = inputs(*size)
        with torch.no_grad():
            torch.testing.assert_close(
                compiled(pixel_values).logits, classifier(pixel_values).logits, atol=1e-4, rtol=0
            )


def test_eager_mix_ffn_still_runs_in_bands(segmenter):
    """Tracing uses one band; eager mode keeps the bands (the memory and time behaviour of `chunk_size_feed_forward`)."""
    mlp = segmenter.pacavit.stages[0].layers[0].mlp
    widths = []
    handle = mlp.fc1.register_forward_hook(lambda module, args, output: widths.append(output.shape[1]))
    try:
        with torch.no_grad():
            segmenter(inputs(1, 64, 64))  # 16 x 16 patches in stage 1: bands of 4 rows (+ the rows around them)
    finally:
        handle.remove()
    assert widths == [5 * 16, 6 * 16, 6 * 16, 5 * 16]


def compile_recording_graphs(model, **compile_options):
    """`torch.compile(model)` with a dynamo backend that records each FX graph it is given (and runs it as is, no
    inductor); returns the compiled model and the list the graphs are appended to."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    return torch.compile(model, backend=record, **compile_options), graphs


def fc1_band_heights(model, pixel_values, **compile_options):
    """Compiles `model` (dynamo with a graph-recording backend, no inductor), runs it on `pixel_values` and returns
    the number of rows of each band the first Mix-FFN expands (its 1x1 convolutions with fc1's weight), with the
    compiled output."""
    torch._dynamo.reset()
    compiled, graphs = compile_recording_graphs(model, **compile_options)
    with torch.no_grad():
        output = compiled(pixel_values)
    torch._dynamo.reset()
    (graph,) = graphs
    heights = []
    for node in graph.graph.nodes:
        if node.target is torch.conv2d:
            weight = node.args[1]
            while weight.op != "placeholder":  # fc1.weight viewed as a 1x1 kernel
                weight = weight.args[0]
            if "stages_modules_0_modules_layers_modules_0_modules_mlp_modules_fc1" in weight.name:
                heights.append(node.meta["example_value"].shape[-2])
    return heights, output


def test_compiled_graphs_keep_the_bands(segmenter):
    """torch.compile unrolls the bands (where they save memory traffic as in eager mode), for one input size or, with
    symbolic sizes, for the sizes with the same number of bands; both equal the eager model."""
    pixel_values = inputs(1, 64, 64)  # 16 x 16 patches in stage 1, 64 per band: 4 rows each (+ the rows around them)
    with torch.no_grad():
        expected = segmenter(pixel_values).logits
    for dynamic in (False, True):
        heights, output = fc1_band_heights(segmenter, pixel_values, dynamic=dynamic)
        assert [int(height.node.hint) if isinstance(height, torch.SymInt) else height for height in heights] == [
            5,
            6,
            6,
            5,
        ], dynamic
        torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=0)


def test_exported_graph_has_one_band_and_no_layout_change_of_the_expanded_map(segmenter):
    """An exported graph (any size) runs the Mix-FFN over the whole map, and the expanded activations (`mlp_ratio`
    times wider than the block's input) never change layout: the Mix-FFN transposes only its narrow input and
    output."""
    program = torch.export.export(segmenter, (), {"pixel_values": EXAMPLE}, dynamic_shapes=DYNAMIC)
    config = segmenter.config
    hidden_size, expanded_size = config.hidden_sizes[0], int(config.hidden_sizes[0] * config.mlp_ratios[0])
    transposed_channels, band_convolutions = [], 0
    for node in program.graph.nodes:
        scope = list(node.meta.get("nn_module_stack", {}).values())
        if node.op != "call_function" or not scope or scope[-1][0] != "pacavit.stages.0.layers.0.mlp":
            continue
        if node.target in (torch.ops.aten.transpose.int, torch.ops.aten.permute.default):
            transposed_channels.append([size for size in node.meta["val"].shape if isinstance(size, int)])
        if node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default):
            weight = node.args[1]
            while weight.op != "placeholder":  # fc1.weight viewed as a 1x1 kernel
                weight = weight.args[0]
            band_convolutions += weight.name.endswith("fc1_weight")
    assert band_convolutions == 1
    assert transposed_channels == [[hidden_size], [hidden_size]]  # tokens -> map, map -> tokens
    assert expanded_size != hidden_size


def test_readme_export_snippet_runs(tmp_path):
    """The README's Export example (the section's first snippet; the UperNet one after it is a fragment, its export is
    tested by test_upernet_onnx_export_with_dynamic_sizes_is_right_at_other_sizes) runs as written and prints what its
    comments say."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Export\n", 1)[1].split("\n## ", 1)[0]
    snippet = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if not line.startswith("[torch.onnx]")]
    assert printed == ["(1, 150, 56, 56) True", "(2, 150, 80, 80) True", "(1, 150, 128, 96)"]


def test_compiled_training_step_gives_the_eager_loss_and_gradients():
    """A compiled training step (the map-layout Mix-FFN in bands, the whole-batch loss) gives the eager loss and the
    same gradients for every parameter, the Mix-FFN's linear layers included."""
    torch.manual_seed(0)
    config = tiny_config()
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = config.classifier_dropout_prob = 0.0
    config.drop_path_rate = 0.0  # no randomness: the compiled step must give the eager numbers
    model = PaCaViTForSemanticSegmentation(config).train()
    pixel_values = inputs(2, 64, 64)
    labels = torch.randint(0, model.config.num_labels, (2, 64, 64), generator=torch.Generator().manual_seed(1))
    labels[0, :7] = model.config.semantic_loss_ignore_index

    def step(forward):
        model.zero_grad()
        loss = forward(pixel_values, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: parameter.grad.clone() for name, parameter in model.named_parameters()}

    torch._dynamo.reset()
    eager_loss, eager_gradients = step(model)
    compiled_loss, compiled_gradients = step(torch.compile(model, backend="aot_eager", dynamic=False))
    torch._dynamo.reset()
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert compiled_gradients.keys() == eager_gradients.keys()
    assert any("mlp.fc1" in name for name in compiled_gradients)
    for name, gradient in eager_gradients.items():
        torch.testing.assert_close(compiled_gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_dynamic_compile_recompiles_only_for_another_number_of_bands():
    """With symbolic sizes (`dynamic=True`) dynamo guards on the number of bands, not on the height: sizes with as
    many bands share one graph, another number of bands compiles again, and with `chunk_size_feed_forward=0` one
    graph serves every (square, batch > 1) size."""

    def graphs_for(chunk_size, sizes):
        torch.manual_seed(0)
        config = tiny_config()
        config.hidden_sizes, config.depths, config.num_attention_heads = [16, 32], [1, 1], [1, 2]
        config.mlp_ratios, config.num_clusters, config.clustering_interval = [2, 2], [4, 0], [0, 0]
        config.chunk_size_feed_forward = chunk_size
        model = PaCaViTForImageClassification(config).eval()
        torch._dynamo.reset()
        compiled, graphs = compile_recording_graphs(model, dynamic=True)
        with torch.no_grad():
            for size in sizes:
                pixel_values = inputs(2, size, size)
                torch.testing.assert_close(
                    compiled(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=0
                )
        torch._dynamo.reset()
        return len(graphs)

    # Stage 1 of 64 and 56 px: 16 x 16 and 14 x 14 patches, 4 rows of at most 64 patches per band, 4 bands each;
    # 80 px: 20 x 20 patches, 3 rows per band, 7 bands.
    assert graphs_for(64, (64, 56)) == 1
    assert graphs_for(64, (64, 56, 80)) == 2
    assert graphs_for(0, (64, 56, 80)) == 1


def test_exact_adaptive_pooling_equals_torchs_at_every_size():
    from paca_hf.export import exact_adaptive_avg_pool2d

    for height, width in [(1, 1), (3, 5), (4, 4), (7, 13), (16, 9)]:
        hidden_states = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height * width))
        for output_size in (1, 2, 3, 6, (2, 5)):
            torch.testing.assert_close(
                exact_adaptive_avg_pool2d(hidden_states, output_size),
                torch.nn.AdaptiveAvgPool2d(output_size)(hidden_states),
                atol=1e-6,
                rtol=0,
            )


def test_upernet_onnx_export_with_dynamic_sizes_is_right_at_other_sizes(tmp_path):
    """transformers' UperNet over the PaCa-ViT backbone (what the converter makes of the authors' UperNet checkpoints),
    exported with dynamic batch, height and width inside `dynamic_pooling`: onnxruntime's logits equal eager's at sizes
    other than the example's (its pyramid pooling to 2, 3 and 6 bins would otherwise be fixed at the example's)."""
    from transformers import UperNetForSemanticSegmentation

    from paca_hf.convert import upernet_config
    from paca_hf.export import dynamic_pooling

    torch.manual_seed(0)
    config = upernet_config(tiny_config(), hidden_size=16, auxiliary_channels=8, num_labels=5)
    upernet = UperNetForSemanticSegmentation(config).eval()
    path = tmp_path / "upernet.onnx"
    with dynamic_pooling(upernet):
        torch.onnx.export(
            upernet,
            (),
            str(path),
            kwargs={"pixel_values": EXAMPLE},
            dynamo=True,
            dynamic_shapes=DYNAMIC,
            input_names=["pixel_values"],
            output_names=["logits"],
        )
    assert not [module for module in upernet.modules() if "forward" in vars(module)]  # the layers' own forward back
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [(1, 96, 96), (1, 192, 160), (2, 256, 256)]:
        pixel_values = inputs(*size)
        with torch.no_grad():
            expected = upernet(pixel_values).logits.numpy()
        (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0, err_msg=str(size))


@pytest.mark.parametrize(
    "model_class", [PaCaViTModel, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTBackbone]
)
def test_fullgraph_compile_on_the_first_call_of_a_fresh_model(model_class):
    """`torch.compile(model, fullgraph=True)` works on a freshly built model's first call, recorded outputs included:
    the output-recording hooks are installed when the model is built (installing them takes a lock, which dynamo
    cannot trace). The dynamo graph is run as is (backend "eager"): the point is that it is captured whole."""
    torch.manual_seed(0)
    config = shared_tiny_config(num_labels=5, out_features=["stage1", "stage3"])
    model = model_class(config).eval()
    pixel_values = inputs(2, 64, 64)
    kwargs = {"output_hidden_states": True}
    if model_class is not PaCaViTBackbone:
        kwargs["output_cluster_assignments"] = True
    torch._dynamo.reset()
    compiled, graphs = compile_recording_graphs(model, fullgraph=True)
    with torch.no_grad():
        actual = compiled(pixel_values, **kwargs)
        expected = model(pixel_values, **kwargs)
    torch._dynamo.reset()
    assert len(graphs) == 1
    assert len(actual.hidden_states) == config.num_stages
    torch.testing.assert_close(actual.to_tuple(), expected.to_tuple(), atol=1e-5, rtol=0)


def test_torch_export_from_a_batch_of_one_with_size_oblivious_shapes(segmenter):
    """torch.export specialises an example size of 0 or 1 for every model (torchvision's ResNet too) unless sizes are
    size-oblivious (`torch.fx.experimental._config.backed_size_oblivious`, what the ONNX exporter sets): then the
    program exported from a batch of 1 takes other batch sizes and image sizes, with the eager outputs. One guard is
    left, from transformers' SDPA integration (`query length > 1`): the last stage needs at least 2 patches (an image
    larger than 32 px in height or width)."""
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        program = torch.export.export(segmenter, (), {"pixel_values": BATCH_OF_ONE}, dynamic_shapes=DYNAMIC)
    for size in SIZES_AFTER_BATCH_OF_ONE:
        pixel_values = inputs(*size)
        with torch.no_grad():
            expected = segmenter(pixel_values)
            actual = program.module()(pixel_values=pixel_values)
        torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=0, msg=str(size))
        torch.testing.assert_close(actual.cluster_logits, expected.cluster_logits, atol=1e-4, rtol=0, msg=str(size))


def test_torchao_int8_dynamic_quantization_eager_and_compiled():
    """torchao's int8 dynamic quantization (int8 weights per output channel, activations quantized per token at run
    time) runs eagerly and under torch.compile(fullgraph=True). The compiled graph keeps the quantized linear layers
    (the Mix-FFN's map layout views plain weights as 1x1 kernels; a quantized weight stays a `linear`) and gives the
    eager quantized logits. Against fp32 the logits differ by int8 rounding: each operand is within half a step
    (1/254 of its row's largest value) and the errors compound over the blocks, so the bound is 5% of the logits'
    range (0.16% measured)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    torch.manual_seed(0)
    config = tiny_config()
    config.hidden_sizes, config.depths, config.num_attention_heads = [16, 32], [1, 1], [1, 2]
    config.mlp_ratios, config.num_clusters, config.clustering_interval = [2, 2], [4, 0], [0, 0]
    model = PaCaViTForImageClassification(config).eval()
    pixel_values = inputs(2, 64, 64)
    with torch.no_grad():
        fp32 = model(pixel_values).logits
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    fc1 = model.pacavit.stages[0].layers[0].mlp.fc1
    assert type(fc1.weight) is not torch.nn.Parameter and fc1.weight.qdata.dtype == torch.int8
    torch._dynamo.reset()
    compiled, graphs = compile_recording_graphs(model, fullgraph=True)
    with torch.no_grad():
        quantized = model(pixel_values).logits
        quantized_compiled = compiled(pixel_values).logits
    torch._dynamo.reset()
    assert len(graphs) == 1
    scale = (fp32.max() - fp32.min()).item()
    assert (quantized - fp32).abs().max() <= 0.05 * scale
    assert not torch.equal(quantized, fp32)
    torch.testing.assert_close(quantized_compiled, quantized, atol=1e-5, rtol=0)
