"""How the network runs fast without changing a bit: derived weights (tensors computed from the parameters, never
saved), oneDNN's fused convolutions on CPUs, and the batching that gives every image and region the bits it gets
alone.

`modeling_butd_frcnn.py` holds the network and calls these helpers; none of them changes what the network computes
(the fused and portable paths give the same bits; tested). This file travels with the model files as Hub remote
code: it imports nothing from the rest of the package.
"""

import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# Derived weights: computed from the parameters for speed, never saved
# ---------------------------------------------------------------------------------------------------------------


class ButdFrcnnDerivedKey(NamedTuple):
    """What a derived weight is: `variant` names the computation (`"folded"`: BatchNorm + Scale folded into the
    convolution), `dtype` and `memory_format` the form the forward uses it in."""

    variant: str
    dtype: torch.dtype
    memory_format: torch.memory_format = torch.contiguous_format


class ButdFrcnnDerivedEntry(NamedTuple):
    """Derived tensors and what they were computed from (weak references: an entry never keeps old tensors alive)."""

    sources: tuple[weakref.ref, ...]
    source_kinds: tuple[tuple[torch.dtype, torch.device], ...]
    tensors: tuple[torch.Tensor, ...]

    def built_from(self, sources: Sequence[torch.Tensor]) -> bool:
        """Whether the module still holds the very tensors this entry was computed from, in their dtype and device."""
        return len(sources) == len(self.sources) and all(
            ref() is tensor and kind == (tensor.dtype, tensor.device)
            for ref, kind, tensor in zip(self.sources, self.source_kinds, sources)
        )


class ButdFrcnnDerivedWeights:
    """The one home of the tensors a module computes from its parameters and buffers to run faster (BatchNorm +
    Scale folded into a convolution; more variants may come, e.g. other dtypes), which the checkpoint does not hold.

    An entry is built on first use, for one [`ButdFrcnnDerivedKey`], and costs memory until it is dropped
    ([`ButdFrcnnPreTrainedModel.derived_weights_nbytes`] says how much: about one more copy of every convolution
    weight). Its lifetime:
    - it is used only while gradients are off (`torch.no_grad()`, `torch.inference_mode()`, as extraction and the
      pipelines run the model). With gradients on, the module computes the tensors in the call, so that gradients
      reach its parameters, and drops its entries when one of its parameters requires gradients: an optimizer step
      is likely to change them next;
    - it is rebuilt when the module no longer holds the very tensors it was computed from, in the same dtype and on
      the same device: after `.to()`, `.half()`, `.cuda()` and the like (which replace the buffers and change dtype or
      device), or after new tensors are assigned;
    - it is dropped when weights are loaded (`load_state_dict`), on `model.train()` and `model.eval()`, and by
      [`ButdFrcnnPreTrainedModel.clear_derived_weights`]. Only that last one is needed by hand, after writing
      parameters in place with gradients off (`with torch.no_grad(): param.copy_(...)`, writes through `.data`):
      PyTorch tells nobody about those.

    Derived weights are never saved or copied: pickling or deep-copying a module leaves the copy's store empty.
    """

    def __init__(self) -> None:
        self._entries: dict[ButdFrcnnDerivedKey, ButdFrcnnDerivedEntry] = {}

    def get(
        self,
        key: ButdFrcnnDerivedKey,
        sources: Sequence[torch.Tensor],
        build: Callable[[], tuple[torch.Tensor, ...]],
    ) -> tuple[torch.Tensor, ...]:
        """The tensors `build()` returns for `key`, computed from `sources`: from the store when it holds them for
        these very sources, else built (and stored while gradients are off)."""
        if torch.compiler.is_compiling():  # traced into the graph, which keeps what it needs
            return build()
        if torch.is_grad_enabled():
            if any(source.requires_grad for source in sources):
                self.clear()
            return build()
        entry = self._entries.get(key)
        if entry is None or not entry.built_from(sources):
            # what was built from other tensors will not be used again
            self._entries = {k: e for k, e in self._entries.items() if e.built_from(sources)}
            entry = ButdFrcnnDerivedEntry(
                tuple(weakref.ref(source) for source in sources),
                tuple((source.dtype, source.device) for source in sources),
                tuple(build()),
            )
            self._entries[key] = entry
        return entry.tensors

    def clear(self) -> None:
        self._entries = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        return sum(tensor.nbytes for entry in self._entries.values() for tensor in entry.tensors)

    def __getstate__(self) -> dict:
        return {"_entries": {}}  # derived, never saved (weak references cannot be pickled anyway)

    def __deepcopy__(self, memo: dict) -> "ButdFrcnnDerivedWeights":
        return ButdFrcnnDerivedWeights()


def derived_weight_stores(module: nn.Module) -> Iterator[ButdFrcnnDerivedWeights]:
    """The derived-weight stores of `module` and its submodules."""
    for submodule in module.modules():
        store = getattr(submodule, "derived_weights", None)
        if isinstance(store, ButdFrcnnDerivedWeights):
            yield store


def drop_derived_weights(module: nn.Module, incompatible_keys: object = None) -> None:
    """Empty the derived-weight stores of `module` and its submodules (also a `load_state_dict` post-hook)."""
    for store in derived_weight_stores(module):
        store.clear()


# ---------------------------------------------------------------------------------------------------------------
# oneDNN fused convolutions (CPU, without gradients)
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def onednn_fused_convolutions() -> bool:
    """Whether this torch runs oneDNN's fused convolutions with the signatures used here: checked once, on first use.

    They are the private ops that torch.compile's CPU backend emits (`mkldnn._convolution_pointwise`, its in-place
    `.binary` form, `mkldnn._reorder_convolution_weight`), plus `torch._C._select_conv_backend`, which says whether
    `F.conv2d` itself would run oneDNN. Being private, they may be missing or different in another torch version
    (this file also runs as Hub remote code): a small problem is run through them and compared with `F.conv2d`, and
    any failure means the portable path (`F.conv2d` and in-place epilogues) everywhere.
    """
    mkldnn = torch.ops.mkldnn
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        # fixed values, not random ones: the check must not consume the caller's random numbers
        x = torch.linspace(-1, 1, 2 * 8 * 5 * 5).reshape(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
        weight = torch.linspace(-0.5, 0.5, 8 * 8 * 3 * 3).reshape(8, 8, 3, 3)
        weight = weight.contiguous(memory_format=torch.channels_last)
        bias = torch.linspace(-0.1, 0.1, 8)
        geometry = ([1, 1], [1, 1], [1, 1], 1)  # padding, stride, dilation, groups
        torch._C._select_conv_backend(x, weight, bias, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
        packed = mkldnn._reorder_convolution_weight(weight, *geometry[:3], 1, list(x.shape))
        expected = F.conv2d(x, weight, bias, 1, 1, 1)
        fused = mkldnn._convolution_pointwise(x, packed, bias, *geometry, "relu", [], "")
        residual = torch.ones_like(expected)
        mkldnn._convolution_pointwise_.binary(residual, x, packed, bias, *geometry, "add", 1.0, "relu", [], "")
        return torch.allclose(fused, expected.relu(), atol=1e-5) and torch.allclose(
            residual, (expected + 1).relu(), atol=1e-5
        )
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False


def convolution_backend(x: torch.Tensor, conv: nn.Conv2d) -> object:
    """The backend `F.conv2d` picks for `conv` on `x` (oneDNN, PyTorch's own kernels, cuDNN...): where it picks
    matters for the bits. Needs `onednn_fused_convolutions()` (which checks that this private query exists)."""
    return torch._C._select_conv_backend(
        x, conv.weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0], conv.groups
    )


def batch_changes_kernels(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether `F.conv2d` would run this batch of images through other kernels than each image alone.

    PyTorch runs a small float32 problem of one image on its own kernels (e.g. a res4 map of 20480 values or fewer:
    small images in a small network) and the same problem for two images on oneDNN, which rounds differently. The
    layers whose batch holds images then run them one at a time, so that an image's results never depend on the
    batch it came in. Known on CPUs only (cuDNN picks its algorithms by shape as well, out of sight).
    """
    if x.shape[0] < 2 or x.device.type != "cpu" or torch.compiler.is_compiling() or not onednn_fused_convolutions():
        return False
    return convolution_backend(x, conv) != convolution_backend(x[:1], conv)


def onednn_runs(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether `F.conv2d` would run `conv` on `x` through oneDNN, and the fused ops can run it instead.

    `F.conv2d` sends small float32 problems (one image and a small map; 1x1 kernels on fewer than 16 images with one
    thread) to PyTorch's own kernels, which round differently: the fused path runs exactly where oneDNN would, so
    that no result depends on which path ran. Never with gradients (the fused ops have no backward), never while
    torch.compile traces (it fuses by itself).
    """
    if torch.is_grad_enabled() or x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return onednn_fused_convolutions() and convolution_backend(x, conv) == torch._C._ConvBackend.Mkldnn


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether `x` is laid out channels_last (and not also plainly contiguous, as 1x1 maps are)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def convolution_geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    """`(padding, stride, dilation, groups)` of `conv`, as oneDNN's ops take them."""
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def onednn_prepacked_weight(weight: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv`'s channels_last `weight` reordered into oneDNN's blocked layout for inputs like `x` ("prepacked", an
    opaque mkldnn tensor; its layout does not depend on the number of images or regions)."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, *convolution_geometry(conv), list(x.shape))


def onednn_fused_convolution(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    conv: nn.Conv2d,
    relu: bool,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """`conv` of `x` with `weight` and `bias` (prepacked or plain), plus `residual` if given, then a ReLU if `relu`,
    in one oneDNN call: the sum and the ReLU are applied by the convolution kernel as it writes its output
    (post-ops). Only where `onednn_runs`; `residual` is overwritten with the result."""
    geometry = convolution_geometry(conv)
    activation = "relu" if relu else "none"
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, activation, [], "")
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        residual, x, weight, bias, *geometry, "add", 1.0, activation, [], ""
    )


# ---------------------------------------------------------------------------------------------------------------
# Weights in the input's dtype (precision "bf16" on float32 weights)
# ---------------------------------------------------------------------------------------------------------------


def weight_and_bias_in_dtype(
    module: nn.Linear | nn.Conv2d, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The module's weight and bias in `dtype`: its own, or copies kept in its `derived_weights` (precision "bf16"
    on float32 weights)."""
    if module.weight.dtype == dtype:
        return module.weight, module.bias
    sources = (module.weight,) if module.bias is None else (module.weight, module.bias)
    key = ButdFrcnnDerivedKey("cast", dtype)
    copies = module.derived_weights.get(key, sources, lambda: tuple(source.to(dtype) for source in sources))
    return copies[0], copies[1] if len(copies) > 1 else None


# ---------------------------------------------------------------------------------------------------------------
# Batches: images grouped by size, results padded, regions in chunks
# ---------------------------------------------------------------------------------------------------------------


def pad_and_stack(tensors: list[torch.Tensor], value: float = 0) -> torch.Tensor:
    """Stack per-image tensors of different lengths along a new batch dimension, padding at the end."""
    length = max(t.shape[0] for t in tensors)
    out = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), value)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def group_by_size(image_sizes: torch.Tensor) -> dict[tuple[int, int], list[int]]:
    """Batch indices of the images of each distinct `(height, width)`, in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (height, width) in enumerate(image_sizes.tolist()):
        groups.setdefault((int(height), int(width)), []).append(index)
    return groups


def scatter_feature_maps(
    hidden_states: tuple[torch.Tensor, ...] | None,
    maps: Sequence[torch.Tensor],
    indices: list[int],
    batch_size: int,
) -> tuple[torch.Tensor, ...]:
    """Place one size group's feature maps into batch-wide, zero-padded tensors (grown as larger groups come)."""
    hidden_states = list(hidden_states) if hidden_states is not None else [None] * len(maps)
    for level, feature_map in enumerate(maps):
        current = hidden_states[level]
        height = max(feature_map.shape[2], 0 if current is None else current.shape[2])
        width = max(feature_map.shape[3], 0 if current is None else current.shape[3])
        grown = feature_map.new_zeros((batch_size, feature_map.shape[1], height, width))
        if current is not None:
            grown[:, :, : current.shape[2], : current.shape[3]] = current
        grown[indices, :, : feature_map.shape[2], : feature_map.shape[3]] = feature_map
        hidden_states[level] = grown
    return tuple(hidden_states)


def chunks_without_singletons(x: torch.Tensor, chunk_size: int, min_rows: int = 2) -> list[torch.Tensor]:
    """Split along dim 0 into chunks of `chunk_size`, merging a last chunk of fewer than `min_rows` rows into the
    previous one: single rows take other kernels (and other roundings) than batches do."""
    chunks = list(torch.split(x, chunk_size))
    if len(chunks) > 1 and chunks[-1].shape[0] < min_rows:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks
