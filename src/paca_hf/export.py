"""Exporting models whose pooling the ONNX exporter fixes at the example's size.

`nn.AdaptiveAvgPool2d` to an output other than 1 x 1 (UperNet's pyramid pooling: scales 2, 3 and 6) is turned by the
dynamo ONNX exporter into an average pool and index gathers whose kernel and indices are computed from the example's
feature map, also when height and width are exported as dynamic: the ONNX graph then gives wrong logits at other
sizes, or fails on an index out of range, while `torch.export`'s own program is right. [`dynamic_pooling`] makes
those layers compute [`exact_adaptive_avg_pool2d`] for the duration of an export: the same bins, from the input's size
at run time.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn


def _pool_axis(hidden_states: torch.Tensor, dim: int, output_size: int) -> torch.Tensor:
    """Means over PyTorch's adaptive bins along `dim`: bin i spans [floor(i * n / k), ceil((i + 1) * n / k)), summed
    as differences of a running sum, so that the bin edges are arithmetic on the input's size, not constants."""
    size = hidden_states.shape[dim]
    index = torch.arange(output_size, device=hidden_states.device)
    start = index * size // output_size
    end = ((index + 1) * size + output_size - 1) // output_size
    running = torch.cat([torch.zeros_like(hidden_states.narrow(dim, 0, 1)), hidden_states.cumsum(dim)], dim)
    sums = running.index_select(dim, end) - running.index_select(dim, start)
    shape = [1] * hidden_states.ndim
    shape[dim] = output_size
    return sums / (end - start).to(hidden_states.dtype).view(shape)


def exact_adaptive_avg_pool2d(hidden_states: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """`nn.functional.adaptive_avg_pool2d` (same bins, same values up to float rounding) written with ops whose sizes
    follow the input in an exported graph. Input `(..., height, width)`, output `(..., *output_size)`; an output size
    must be given for both axes (None, "keep the input's", is refused with ValueError)."""
    height, width = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if height is None or width is None:
        raise ValueError(f"exact_adaptive_avg_pool2d needs both output sizes, got {output_size!r}")
    return _pool_axis(_pool_axis(hidden_states, -2, height), -1, width)


@contextlib.contextmanager
def dynamic_pooling(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every `nn.AdaptiveAvgPool2d` of `model` to an output other than 1 x 1 computes
    [`exact_adaptive_avg_pool2d`] instead, so that an export with dynamic height and width is right at every size:

        with dynamic_pooling(upernet):
            torch.onnx.export(upernet, (), "upernet.onnx", kwargs={"pixel_values": example}, dynamo=True,
                              dynamic_shapes=dynamic)

    The layers stay in place (their `forward` is replaced, also where a model calls them from a plain list, as
    transformers' UperNet does) and get their own `forward` back on exit, also after an error. Yields `model`."""
    pools = [
        module
        for module in model.modules()
        if type(module) is nn.AdaptiveAvgPool2d and module.output_size not in (1, (1, 1))
    ]
    try:
        for pool in pools:
            pool.forward = functools.partial(exact_adaptive_avg_pool2d, output_size=pool.output_size)
        yield model
    finally:
        for pool in pools:
            pool.__dict__.pop("forward", None)


__all__ = ["dynamic_pooling", "exact_adaptive_avg_pool2d"]
