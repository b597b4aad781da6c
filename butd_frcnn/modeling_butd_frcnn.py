"""The bottom-up-attention Faster R-CNN (ResNet C4 + attribute head), computing what the original Caffe test network
and `tools/generate_tsv.py` compute.

This file holds the network: layers, backbone, region proposal network, RoI heads, outputs and the model. Beside
it, each imported relatively (they travel together as Hub remote code):
- `ops_butd_frcnn.py`: the original's arithmetic (its sort order among ties, numpy's float32 `exp`, anchors, box
  decoding, NMS, RoI pooling, the region selection), whose docstring states the conventions every file follows;
- `kernels_butd_frcnn.py`: how the layers run fast without changing a bit (derived weights such as the folded
  BatchNorm, oneDNN's fused convolutions, batching that gives each image the bits it gets alone);
- `precision_butd_frcnn.py`: the precision modes' machinery (the screened selection of "fp32-screened", CUDA
  float32 math).

The state-dict names follow the detectron2 / transformers FRCNN layout so that other checkpoints map onto it.
"""

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple

from .compat_butd_frcnn import init, register_image_processor
from .configuration_butd_frcnn import PRECISIONS, ButdFrcnnConfig
from .image_processing_butd_frcnn import ButdFrcnnImageProcessor
from .kernels_butd_frcnn import (
    ButdFrcnnDerivedKey,
    ButdFrcnnDerivedWeights,
    batch_changes_kernels,
    chunks_without_singletons,
    derived_weight_stores,
    drop_derived_weights,
    group_by_size,
    is_channels_last,
    onednn_fused_convolution,
    onednn_prepacked_weight,
    onednn_runs,
    pad_and_stack,
    scatter_feature_maps,
    weight_and_bias_in_dtype,
)
from .ops_butd_frcnn import (
    argmax_last,
    at_least_two_rows,
    box_sizes_at_least,
    clip_boxes,
    decode_boxes,
    descending_order,
    generate_cell_anchors,
    global_average_pool,
    greedy_nms,
    objectness_probabilities,
    per_class_nms_max_scores,
    roi_max_pool,
    select_regions,
    shift_anchors,
)
from .precision_butd_frcnn import cuda_float32_math, screened_roi_heads, screening_plan

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------


class ButdFrcnnFrozenBatchNorm2d(nn.Module):
    """Caffe's BatchNorm (global statistics) followed by its Scale layer: one affine map per channel.

    Stored like detectron2's FrozenBatchNorm2d: `running_mean` and `running_var` are Caffe's statistics already
    divided by the moving-average factor; `weight` and `bias` are the Scale layer's gamma and beta.
    """

    def __init__(self, num_features: int, eps: float, ends_residual_branch: bool = False):
        super().__init__()
        self.eps = eps
        self.ends_residual_branch = ends_residual_branch  # random init only: start the branch at zero
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def scale_and_shift(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel affine map `x * scale + shift`, computed in `dtype` (default: the buffers' own)."""
        dtype = dtype or self.weight.dtype
        weight, bias, mean, var = (t.to(dtype) for t in (self.weight, self.bias, self.running_mean, self.running_var))
        scale = weight * torch.rsqrt(var + self.eps)
        return scale, bias - mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class ButdFrcnnConvNormActivation(nn.Conv2d):
    """A bias-free Caffe convolution followed by BatchNorm + Scale, run as one convolution with the affine map folded
    into its weight and bias; optionally followed by a residual sum and a ReLU, fused into it where oneDNN runs it.

    `images_in_batch`: the batch dimension of its input holds images (the backbone), each to get the bits it gets
    alone (`batch_changes_kernels`), rather than regions (res5), whose chunks are chosen to keep their bits
    (`chunks_without_singletons`).

    The folded pair lives in `derived_weights` (see [`ButdFrcnnDerivedWeights`] for when it is built and dropped);
    the checkpoint keeps Caffe's separate blobs. With gradients on, the fold is computed in the call, so that
    gradients reach the original parameters.

    Without gradients on a CPU, where `F.conv2d` would run oneDNN, the convolution runs through oneDNN's fused ops
    instead (`onednn_fused_convolutions`): the ReLU and the residual sum are applied by the convolution kernel as it
    writes its output (post-ops) instead of in another pass over memory, and for channels_last inputs the weight is
    reordered once into oneDNN's blocked layout ("prepacked", kept in `derived_weights`) instead of in every call.
    Both give the same bits as the portable path (the same kernel, the same sums; tested). NCHW weights are not
    prepacked: oneDNN would then pick its channels_last kernel, which rounds differently.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        eps: float = 1e-5,
        ends_residual_branch: bool = False,
        images_in_batch: bool = False,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False)
        self.norm = ButdFrcnnFrozenBatchNorm2d(out_channels, eps, ends_residual_branch)
        self.images_in_batch = images_in_batch
        self.derived_weights = ButdFrcnnDerivedWeights()
        self.register_load_state_dict_post_hook(drop_derived_weights)

    def fold_sources(self) -> tuple[torch.Tensor, ...]:
        """The tensors the fold is computed from: the weight and the BatchNorm + Scale buffers."""
        return (self.weight, *self.norm.buffers())

    def fold(
        self, dtype: torch.dtype, memory_format: torch.memory_format = torch.contiguous_format
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single convolution: computed in at least float32, then cast to `dtype`; the weight
        in the inputs' `memory_format`."""
        precision = torch.promote_types(self.weight.dtype, torch.float32)
        scale, shift = self.norm.scale_and_shift(precision)
        weight = self.weight.to(precision) * scale.view(-1, 1, 1, 1)
        return weight.to(dtype).contiguous(memory_format=memory_format), shift.to(dtype)

    def folded(
        self, dtype: torch.dtype, memory_format: torch.memory_format = torch.contiguous_format
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`fold(dtype, memory_format)`, built once and kept in `derived_weights` while gradients are off."""
        key = ButdFrcnnDerivedKey("folded", dtype, memory_format)
        return self.derived_weights.get(key, self.fold_sources(), lambda: self.fold(dtype, memory_format))

    def prepacked(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded weight in oneDNN's blocked layout for channels_last inputs like `x` (an opaque mkldnn tensor;
        its layout does not depend on the number of images or regions), and the bias: built once, in place of the
        channels_last fold."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            weight, bias = self.fold(x.dtype, torch.channels_last)
            return onednn_prepacked_weight(weight, x, self), bias

        key = ButdFrcnnDerivedKey("prepacked", x.dtype, torch.channels_last)
        return self.derived_weights.get(key, self.fold_sources(), build)

    def forward(self, x: torch.Tensor, relu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The folded convolution of `x`, plus `residual` if given, then a ReLU if `relu`.

        `residual` must be a tensor nothing else needs any more: the fused path writes the result into it.
        """
        if self.images_in_batch and batch_changes_kernels(x, self):
            residuals = [None] * x.shape[0] if residual is None else residual.split(1)
            return torch.cat([self(image, relu, rest) for image, rest in zip(x.split(1), residuals)])
        channels_last = is_channels_last(x)
        if onednn_runs(x, self):
            weight, bias = self.prepacked(x) if channels_last else self.folded(x.dtype)
            return onednn_fused_convolution(x, weight, bias, self, relu, residual)
        weight, bias = self.folded(x.dtype, torch.channels_last if channels_last else torch.contiguous_format)
        # in place on the convolution's fresh output: bit-identical to the out-of-place ops, autograd-safe, and it
        # saves a pass over memory (res5 is memory-bound between its convolutions)
        out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)
        if residual is not None:
            out = out.add_(residual)
        return out.relu_() if relu else out


class ButdFrcnnLinear(nn.Linear):
    """`nn.Linear` computing in its input's dtype (a derived copy of its weights when it holds them in another)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.derived_weights = ButdFrcnnDerivedWeights()
        self.register_load_state_dict_post_hook(drop_derived_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *weight_and_bias_in_dtype(self, x.dtype))


class ButdFrcnnConv2d(nn.Conv2d):
    """`nn.Conv2d` (with bias, no BatchNorm: the RPN head) computing in its input's dtype, as `ButdFrcnnLinear`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.derived_weights = ButdFrcnnDerivedWeights()
        self.register_load_state_dict_post_hook(drop_derived_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if batch_changes_kernels(x, self):  # its batch holds images (the RPN head)
            return torch.cat([self(image) for image in x.split(1)])
        return self._conv_forward(x, *weight_and_bias_in_dtype(self, x.dtype))


class ButdFrcnnBottleneck(nn.Module):
    """Caffe ResNet bottleneck: the stride sits on the first 1x1 conv (and the projection shortcut)."""

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        eps: float = 1e-5,
        images_in_batch: bool = False,
    ):
        super().__init__()
        self.stride = stride
        self.dilation = dilation
        conv = functools.partial(ButdFrcnnConvNormActivation, eps=eps, images_in_batch=images_in_batch)
        if in_channels != out_channels or stride != 1:
            self.shortcut = conv(in_channels, out_channels, 1, stride=stride)
        else:
            self.shortcut = None
        self.conv1 = conv(in_channels, bottleneck_channels, 1, stride=stride)
        self.conv2 = conv(bottleneck_channels, bottleneck_channels, 3, padding=dilation, dilation=dilation)
        self.conv3 = conv(bottleneck_channels, out_channels, 1, ends_residual_branch=True)

    def forward(self, x: torch.Tensor, may_overwrite_input: bool = False) -> torch.Tensor:
        """`may_overwrite_input`: nothing else needs `x` after this block (the stage passes its own intermediate
        maps), so that an identity shortcut can take the residual sum in place."""
        if self.shortcut is not None:
            shortcut = self.shortcut(x)
        else:
            shortcut = x if may_overwrite_input else x.clone()
        out = self.conv1(x, relu=True)
        out = self.conv2(out, relu=True)
        return self.conv3(out, relu=True, residual=shortcut)


class ButdFrcnnStage(nn.Sequential):
    """A ResNet stage: `depth` bottlenecks, the first one changing width and stride; `images_in_batch` as in
    [`ButdFrcnnConvNormActivation`]."""

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        depth: int,
        stride: int,
        dilation: int,
        eps: float,
        images_in_batch: bool,
    ):
        blocks = [
            ButdFrcnnBottleneck(in_channels, bottleneck_channels, out_channels, stride, dilation, eps, images_in_batch)
        ]
        blocks += [
            ButdFrcnnBottleneck(out_channels, bottleneck_channels, out_channels, 1, dilation, eps, images_in_batch)
            for _ in range(depth - 1)
        ]
        super().__init__(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self):
            # the stage's input may be needed elsewhere (a returned feature map); the maps between blocks are not
            x = block(x, may_overwrite_input=index > 0)
        return x


class ButdFrcnnStem(nn.Module):
    """conv1 7x7/2 + BatchNorm + Scale + ReLU, then a 3x3/2 max pool that rounds its output size up (Caffe)."""

    def __init__(self, in_channels: int, out_channels: int, eps: float):
        super().__init__()
        self.conv1 = ButdFrcnnConvNormActivation(
            in_channels, out_channels, 7, stride=2, padding=3, eps=eps, images_in_batch=True
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns conv1's activation (before pooling) and the pooled map."""
        conv1 = self.conv1(x, relu=True)
        return conv1, F.max_pool2d(conv1, kernel_size=3, stride=2, padding=0, ceil_mode=True)


class ButdFrcnnBackbone(nn.Module):
    """ResNet up to res4 (stride 16): the feature map of the RPN and of the RoI pooling."""

    def __init__(self, config: ButdFrcnnConfig):
        super().__init__()
        eps = config.batch_norm_eps
        self.stem = ButdFrcnnStem(config.num_channels, config.stem_channels, eps)
        in_channels = config.stem_channels
        for index, name in enumerate(("res2", "res3", "res4")):
            stage = ButdFrcnnStage(
                in_channels,
                config.bottleneck_sizes[index],
                config.hidden_sizes[index],
                config.depths[index],
                config.stage_strides[index],
                config.stage_dilations[index],
                eps,
                images_in_batch=True,
            )
            self.add_module(name, stage)
            in_channels = config.hidden_sizes[index]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns the feature maps `(conv1 after its ReLU, res2, res3, res4)` of a batch of same-size images."""
        if pixel_values.dtype not in (torch.float32, torch.float64):
            # half precision runs channels_last (its fast kernels want it). float32 stays in NCHW: on a flat image,
            # where all anchors nearly tie, its roundings keep far more of the original's proposal order (266 vs 89
            # of 300 proposals in common), for ~7% of the forward's time.
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        conv1, x = self.stem(pixel_values)
        res2 = self.res2(x)
        res3 = self.res3(res2)
        return conv1, res2, res3, self.res4(res3)


class ButdFrcnnAnchorGenerator(nn.Module):
    """Holds the 12 cell anchors as a persistent buffer so that they travel with the weights; the anchors and the box
    arithmetic stay in float32 whatever the model's dtype."""

    def __init__(self, config: ButdFrcnnConfig):
        super().__init__()
        self.stride = config.feature_stride
        self.base_size = config.anchor_base_size
        self.ratios = list(config.anchor_ratios)
        self.scales = list(config.anchor_scales)
        self.register_buffer("cell_anchors", self.default_cell_anchors(config), persistent=True)

    @staticmethod
    def default_cell_anchors(config: ButdFrcnnConfig) -> torch.Tensor:
        return generate_cell_anchors(config.anchor_base_size, config.anchor_ratios, config.anchor_scales)

    def float32_cell_anchors(self) -> torch.Tensor:
        """The cell anchors in float32.

        Casting the model to half precision (`model.to(torch.bfloat16)`, `from_pretrained(..., dtype=...)`) casts
        this buffer too, and bf16 cannot hold every anchor (375 rounds to 376, 263 to 264, 359 to 360): box decoding
        would start from the wrong anchors. When the buffer is the config's anchors rounded that way, the exact anchors are
        computed again from the config (they are a fixed function of it); other anchors are used as they are.
        """
        anchors = self.cell_anchors
        if anchors.dtype in (torch.float32, torch.float64):
            return anchors.float()
        exact = generate_cell_anchors(self.base_size, self.ratios, self.scales).to(anchors.device)
        if exact.shape == anchors.shape and torch.equal(exact.to(anchors.dtype), anchors):
            return exact
        logger.warning_once(
            f"cell_anchors are held in {anchors.dtype} and are not the config's anchors: using them as they are, "
            "rounded; keep the model in float32 for exact proposals"
        )
        return anchors.float()

    def forward(self, height: int, width: int) -> torch.Tensor:
        return shift_anchors(self.float32_cell_anchors(), height, width, self.stride)


class ButdFrcnnRPNHead(nn.Module):
    """`rpn_conv/3x3` + ReLU, then 2A objectness logits `[bg for anchors 0..A-1, fg for anchors 0..A-1]` and 4A
    box deltas `(dx, dy, dw, dh)` per anchor."""

    def __init__(self, in_channels: int, hidden_channels: int, num_anchors: int):
        super().__init__()
        self.conv = ButdFrcnnConv2d(in_channels, hidden_channels, 3, padding=1)
        self.objectness_logits = ButdFrcnnConv2d(hidden_channels, 2 * num_anchors, 1)
        self.anchor_deltas = ButdFrcnnConv2d(hidden_channels, 4 * num_anchors, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.conv(features).relu_()
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)


class ButdFrcnnRegionProposalNetwork(nn.Module):
    """The RPN and the Python `ProposalLayer` of the original (test mode)."""

    def __init__(self, config: ButdFrcnnConfig):
        super().__init__()
        self.anchor_generator = ButdFrcnnAnchorGenerator(config)
        self.rpn_head = ButdFrcnnRPNHead(config.hidden_sizes[2], config.rpn_hidden_size, config.num_anchors)
        self.pre_nms_top_n = config.rpn_pre_nms_top_n
        self.post_nms_top_n = config.rpn_post_nms_top_n
        self.nms_threshold = config.rpn_nms_threshold
        self.min_size = config.rpn_min_size
        self.exact_tie_order = config.exact_tie_order

    def forward(
        self, features: torch.Tensor, image_height: int, image_width: int, scales: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Proposals of each image of a batch of same-size images, in resized-image pixels, best first.

        Args:
            features (`torch.Tensor` of shape `(B, C, h, w)`): res4.
            image_height, image_width: the images' resized size (`im_info[:2]`).
            scales (`torch.Tensor` of shape `(B,)`): float32 resize factors (`im_info[2]`).

        Returns:
            `list[tuple[torch.Tensor, torch.Tensor]]`: per image, the proposals `(P_i, 4)` (float32,
            `P_i <= rpn_post_nms_top_n`) and their objectness `(P_i,)`.
        """
        logits, deltas = self.rpn_head(features)
        num_anchors = self.anchor_generator.cell_anchors.shape[0]
        # (B, A, h, w) -> (B, h * w * A): the original enumerates (y, x, anchor), slowest to fastest
        foreground = objectness_probabilities(logits)[:, num_anchors:].permute(0, 2, 3, 1).flatten(1)
        deltas = deltas.float().permute(0, 2, 3, 1).reshape(deltas.shape[0], -1, 4)
        anchors = self.anchor_generator(features.shape[2], features.shape[3])
        return [
            self.proposals_from_scores(foreground[i], deltas[i], anchors, image_height, image_width, scales[i])
            for i in range(features.shape[0])
        ]

    def proposals_from_scores(
        self,
        scores: torch.Tensor,
        deltas: torch.Tensor,
        anchors: torch.Tensor,
        image_height: int,
        image_width: int,
        scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, clip, drop small boxes, keep the best `pre_nms_top_n`, NMS, keep the best `post_nms_top_n`.

        Returns:
            `(boxes, scores)`: the proposals `(P, 4)` and their objectness `(P,)`, best first.
        """
        boxes = clip_boxes(decode_boxes(anchors, deltas), image_height, image_width)
        large_enough = box_sizes_at_least(boxes, self.min_size * scale)
        boxes, scores = boxes[large_enough], scores[large_enough]
        order = descending_order(scores, self.exact_tie_order, top_k=self.pre_nms_top_n)
        boxes, scores = boxes[order], scores[order]
        if self.exact_tie_order:  # the original's nms sorts its (already sorted) input again: ties move once more
            order = descending_order(scores, exact_ties=True)
            boxes = boxes[order]
            scores = scores[order]
        keep = greedy_nms(boxes, self.nms_threshold, max_keep=self.post_nms_top_n)
        return boxes[keep], scores[keep]


class ButdFrcnnBoxPredictor(nn.Module):
    """`cls_score` (index 0 = background) and the class-specific `bbox_pred` (4 deltas per class, background too)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = ButdFrcnnLinear(in_features, num_classes)
        self.bbox_pred = ButdFrcnnLinear(in_features, 4 * num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class ButdFrcnnAttributePredictor(nn.Module):
    """Attribute head: embed the predicted class, concatenate after the region feature, `fc_attr` + ReLU, then
    `attr_score` (index 0 = "no attribute")."""

    def __init__(self, in_features: int, num_classes: int, embedding_size: int, hidden_size: int, num_attributes: int):
        super().__init__()
        self.cls_embedding = nn.Embedding(num_classes, embedding_size)
        self.fc_attr = ButdFrcnnLinear(in_features + embedding_size, hidden_size)
        self.attr_score = ButdFrcnnLinear(hidden_size, num_attributes)

    def forward(self, features: torch.Tensor, predicted_classes: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([features, self.cls_embedding(predicted_classes).to(features.dtype)], dim=1)
        return self.attr_score(F.relu(self.fc_attr(hidden)))


class ButdFrcnnHeadOutputs(NamedTuple):
    """What the RoI heads compute for one image's `K` boxes, in every precision."""

    region_features: torch.Tensor
    """`(K, hidden_size)`: `pool5_flat`, res5 and the global average pool."""
    class_probs: torch.Tensor
    """`(K, num_labels)`, float32: `cls_prob` (index 0 = background)."""
    box_deltas: torch.Tensor
    """`(K, 4 * num_labels)`: `bbox_pred`."""
    attribute_probs: torch.Tensor
    """`(K, num_attributes)`, float32: `attr_prob` (index 0 = "no attribute")."""
    settled: torch.Tensor | None = None
    """`(K,)` bool, precision "fp32-screened" only: the rows holding float32 values (the others hold values computed
    from the bfloat16 screening)."""

    def proposal_fields(self) -> dict[str, torch.Tensor]:
        """These outputs under the names of [`ButdFrcnnModelOutput`]'s per-proposal fields."""
        fields = {
            "proposal_features": self.region_features,
            "class_probs": self.class_probs,
            "attribute_probs": self.attribute_probs,
            "box_deltas": self.box_deltas,
        }
        return fields if self.settled is None else {**fields, "settled_proposals": self.settled}


class ButdFrcnnRoIHeads(nn.Module):
    """RoI pooling on res4, res5 at stride 1 with dilation, global average pooling (the region features), and the
    class, box and attribute predictors."""

    def __init__(self, config: ButdFrcnnConfig):
        super().__init__()
        self.pool_size = config.roi_pool_size
        self.spatial_scale = 1.0 / config.feature_stride
        self.chunk_size = config.roi_head_chunk_size
        self.res5 = ButdFrcnnStage(
            config.hidden_sizes[2],
            config.bottleneck_sizes[3],
            config.hidden_sizes[3],
            config.depths[3],
            config.stage_strides[3],
            config.stage_dilations[3],
            config.batch_norm_eps,
            images_in_batch=False,  # regions
        )
        num_classes = config.num_labels
        self.box_predictor = ButdFrcnnBoxPredictor(config.hidden_sizes[3], num_classes)
        self.attribute_predictor = ButdFrcnnAttributePredictor(
            config.hidden_sizes[3],
            num_classes,
            config.class_embedding_size,
            config.attribute_hidden_size,
            config.num_attributes,
        )

    def pool_regions(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Caffe ROIPooling of one image's boxes: corners rounded half away from zero at 1/16, max over bins, empty
        bins give 0 (see `roi_max_pool`).

        Args:
            features (`torch.Tensor` of shape `(1, C, h, w)`): the image's res4.
            boxes (`torch.Tensor` of shape `(K, 4)`): `(x1, y1, x2, y2)` in resized-image pixels.

        Returns:
            `torch.Tensor` of shape `(K, C, P, P)` in the features' dtype, channels_last (as res5 runs).
        """
        return roi_max_pool(features[0], boxes, self.pool_size, self.spatial_scale)

    def region_features(self, pooled: torch.Tensor, min_rows: int = 2) -> torch.Tensor:
        """res5 and the global average pool (`pool5_flat`), over the regions in memory-bounded chunks (none smaller
        than `min_rows` regions, unless all of them are)."""
        chunks = chunks_without_singletons(pooled, self.chunk_size, min_rows)
        outputs = [global_average_pool(self.res5(chunk)) for chunk in chunks]
        return torch.cat(outputs) if outputs else pooled.new_zeros((0, self.res5[-1].conv3.out_channels))

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> ButdFrcnnHeadOutputs:
        """Region features, class probabilities, box deltas and attribute probabilities of one image's boxes.

        Each image runs on its own, in chunks that depend only on its own box count, so that its results do not
        depend on which other images share its batch (BLAS kernels choose code paths by matrix size).
        """
        return self.predict(self.region_features(self.pool_regions(features, boxes)))

    def predict(self, region_features: torch.Tensor) -> ButdFrcnnHeadOutputs:
        """The class, box and attribute heads on region features `(K, C)`."""
        rows = at_least_two_rows(region_features)
        class_logits, box_deltas = self.box_predictor(rows)
        attribute_logits = self.attribute_predictor(rows, argmax_last(class_logits, dim=1))
        count = region_features.shape[0]
        class_probs = torch.softmax(class_logits[:count].float(), dim=1)
        attribute_probs = torch.softmax(attribute_logits[:count].float(), dim=1)
        return ButdFrcnnHeadOutputs(region_features, class_probs, box_deltas[:count], attribute_probs)

    def class_probabilities(self, region_features: torch.Tensor) -> torch.Tensor:
        """The class probabilities of `predict`, alone (a fifth of the heads' work), with the same bits."""
        logits = self.box_predictor.cls_score(at_least_two_rows(region_features))
        return torch.softmax(logits[: region_features.shape[0]].float(), dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Outputs and model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ButdFrcnnModelOutput(ModelOutput):
    r"""
    Outputs of [`ButdFrcnnModel`]. Per-image results are padded to the batch's largest count: features, boxes and
    scores with 0, ids and indices with -1; `num_boxes` and `num_proposals` say how many entries are real.

    With given boxes (`model(..., boxes=...)`) the given boxes take the place of the proposals and every one of them is
    a region, in the given order: `num_boxes == num_proposals == K`, `proposals` holds them in resized-image pixels,
    `proposal_indices` is `0..K-1`, `proposal_scores` is `None` (no RPN ran) and `selection_scores` is each box's
    `object_scores` (no selection ran).

    Args:
        region_features (`torch.FloatTensor` of shape `(batch_size, num_regions, hidden_size)`):
            The selected regions' `pool5_flat` features (2048-d for ResNet-101): the "BUTD features".
        boxes (`torch.FloatTensor` of shape `(batch_size, num_regions, 4)`):
            The selected regions, `(x1, y1, x2, y2)` in original-image pixels (inclusive convention). These are the
            proposals themselves, not regressed boxes, as in the original.
        object_ids (`torch.LongTensor` of shape `(batch_size, num_regions)`):
            Most probable object class of each region, an id of `config.id2label` (1..num_labels-1).
        object_scores (`torch.FloatTensor` of shape `(batch_size, num_regions)`): its probability.
        attribute_ids (`torch.LongTensor` of shape `(batch_size, num_regions)`):
            Most probable attribute (1..num_attributes-1), an index of `config.attribute_names`.
        attribute_scores (`torch.FloatTensor` of shape `(batch_size, num_regions)`): its probability.
        num_boxes (`torch.LongTensor` of shape `(batch_size,)`): selected regions per image.
        proposals (`torch.FloatTensor` of shape `(batch_size, num_proposals, 4)`):
            All RPN proposals in resized-image pixels (the original's `rois[:, 1:]`), best first.
        num_proposals (`torch.LongTensor` of shape `(batch_size,)`): proposals per image (300 or fewer).
        proposal_scores (`torch.FloatTensor` of shape `(batch_size, num_proposals)`): each proposal's objectness
            (the RPN's foreground probability).
        proposal_features (`torch.FloatTensor` of shape `(batch_size, num_proposals, hidden_size)`):
            `pool5_flat` of every proposal.
        class_probs (`torch.FloatTensor` of shape `(batch_size, num_proposals, num_labels)`): `cls_prob`.
        attribute_probs (`torch.FloatTensor` of shape `(batch_size, num_proposals, num_attributes)`): `attr_prob`.
        box_deltas (`torch.FloatTensor` of shape `(batch_size, num_proposals, 4 * num_labels)`): `bbox_pred`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            conv1 (after its ReLU, before pooling), res2, res3 and res4 feature maps, zero beyond each image.
        original_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
            The `original_sizes` given to the forward, passed through: the `(height, width)` that `boxes` refer to,
            so that post-processing can map them onto other target sizes.
        proposal_indices (`torch.LongTensor` of shape `(batch_size, num_regions)`):
            Each selected region's row among the proposals (`proposals`, `proposal_features`, `class_probs`,
            `attribute_probs`, `box_deltas`): `class_probs[i, proposal_indices[i, :num_boxes[i]]]` are the selected
            regions' 1601-class distributions (the "soft labels" of UNITER and VILLA). For given boxes, `0..K-1`.
        selection_scores (`torch.FloatTensor` of shape `(batch_size, num_regions)`):
            Each selected region's `max_conf` in `generate_tsv.py`: its highest class probability among the classes
            whose per-class NMS kept it (0 when none did), the score the selection ranks regions by (UNITER's
            `conf`). Given boxes are not selected, so nothing ranks them: each gets its highest object-class
            probability (its `object_scores`), which depends on that box alone. A per-class NMS over the given boxes
            would zero a box that overlaps a likelier box of the same class, and UNITER's converter, which keeps the
            regions whose `conf` passes its threshold, would then drop a box the user asked for.
        settled_proposals (`torch.BoolTensor` of shape `(batch_size, num_proposals)`, *optional*, precision
            `"fp32-screened"` only): which proposals hold float32 values in `proposal_features`, `class_probs`,
            `attribute_probs` and `box_deltas` (every selected region does); the others hold values computed from
            the bfloat16 screening. Its mean says how much of the float32 work the screening saved.
    """

    region_features: torch.FloatTensor | None = None
    boxes: torch.FloatTensor | None = None
    object_ids: torch.LongTensor | None = None
    object_scores: torch.FloatTensor | None = None
    attribute_ids: torch.LongTensor | None = None
    attribute_scores: torch.FloatTensor | None = None
    num_boxes: torch.LongTensor | None = None
    proposals: torch.FloatTensor | None = None
    num_proposals: torch.LongTensor | None = None
    proposal_scores: torch.FloatTensor | None = None
    proposal_features: torch.FloatTensor | None = None
    class_probs: torch.FloatTensor | None = None
    attribute_probs: torch.FloatTensor | None = None
    box_deltas: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    original_sizes: torch.LongTensor | None = None
    proposal_indices: torch.LongTensor | None = None
    selection_scores: torch.FloatTensor | None = None
    settled_proposals: torch.BoolTensor | None = None


class ButdFrcnnPreTrainedModel(PreTrainedModel):
    config: ButdFrcnnConfig
    config_class = ButdFrcnnConfig
    base_model_prefix = "butd_frcnn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        """Random weights for models built from a config (tests, benchmarks); a checkpoint overwrites all of them.

        The frozen BatchNorms start as identities and the last one of every residual branch at zero, so that a
        randomly initialised 101-layer network keeps bounded activations and proposes boxes near its anchors.
        """
        if isinstance(module, ButdFrcnnFrozenBatchNorm2d):
            init.constant_(module.weight, 0.0 if module.ends_residual_branch else 1.0)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, ButdFrcnnAnchorGenerator):
            init.copy_(module.cell_anchors, ButdFrcnnAnchorGenerator.default_cell_anchors(self.config))
        elif isinstance(module, ButdFrcnnConvNormActivation):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Conv2d):  # the RPN head
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # box deltas start near zero, so that random proposals stay near their anchors
            init.normal_(module.weight, std=0.001 if module is self.roi_heads.box_predictor.bbox_pred else 0.01)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=0.01)

    def clear_derived_weights(self) -> None:
        """Drop every derived weight (BatchNorm folded into the convolutions): they are rebuilt on the next forward
        without gradients. Needed only after writing parameters in place with gradients off (`param.copy_(...)`
        under `torch.no_grad()`, writes through `.data`); loading weights, `.to()`, `train()` and `eval()` do it by
        themselves (see [`ButdFrcnnDerivedWeights`])."""
        drop_derived_weights(self)

    def derived_weights_nbytes(self) -> int:
        """Memory held by the derived weights now, in bytes (about one more copy of the convolution weights once a
        forward without gradients has run)."""
        return sum(store.nbytes for store in derived_weight_stores(self))

    def train(self, mode: bool = True) -> "ButdFrcnnPreTrainedModel":
        """`nn.Module.train` (and so `eval`); also drops the derived weights, so that weights trained since they were
        built are never used stale."""
        self.clear_derived_weights()
        return super().train(mode)


class ButdFrcnnModel(ButdFrcnnPreTrainedModel):
    """Bottom-up-attention Faster R-CNN: image batch in, selected regions with their features, classes and
    attributes out (plus every proposal's outputs, for parity checks).

    The region selection of `generate_tsv.py` (per-class NMS, threshold, 10-100 or 36 regions) runs inside the
    model, not only in post-processing: the selected regions' features *are* the model's answer, and the
    `image-feature-extraction` pipeline returns the first output field, so `region_features` must already hold the
    selected regions when the forward returns. `post_process_object_detection` only filters and rescales them.

    The forward follows the caller's gradient mode, as every transformers model does: run it under
    `torch.inference_mode()` (or `torch.no_grad()`) for features, as extraction and the pipelines do; with gradients
    on, `region_features`, `class_probs`, `attribute_probs` and the other float outputs are differentiable with
    respect to `pixel_values` and the parameters (ids, counts and which regions are chosen are not).
    """

    # Saved as remote code, as transformers saves the classes it loads as such: `save_pretrained` copies this file
    # and the files it imports relatively, and names the class in `config.auto_map`.
    _auto_class = "AutoModel"
    # Writes the files a Hub folder carries next to the model into a folder being saved (the installed package sets
    # it: the Inference Endpoints handler and its requirements, the attribute-aware pipeline).
    save_companion_files: Callable[[str | os.PathLike], object] | None = None

    def __init__(self, config: ButdFrcnnConfig):
        super().__init__(config)
        self.backbone = ButdFrcnnBackbone(config)
        self.proposal_generator = ButdFrcnnRegionProposalNetwork(config)
        self.roi_heads = ButdFrcnnRoIHeads(config)
        self.post_init()

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """transformers' `save_pretrained`, with the class also named for `AutoModelForObjectDetection` (the
        object-detection pipeline loads through it) and the companion files written next to the model.

        With `push_to_hub=True` transformers uploads from inside its save, before the companion files exist: the
        folder is saved first, then pushed as `push_to_hub` pushes (a fresh save)."""
        if kwargs.pop("push_to_hub", False):
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            hub = {name: kwargs.pop(name) for name in ("commit_message", "create_pr", "private") if name in kwargs}
            self.save_pretrained(save_directory, *args, **kwargs)
            self.push_to_hub(repo_id, token=kwargs.get("token"), **hub)
            return
        if self._auto_class is not None:
            reference = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            self.config.auto_map = {**auto_map, "AutoModelForObjectDetection": reference}
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.save_companion_files is not None and kwargs.get("is_main_process", True):
            self.save_companion_files(save_directory)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        scales: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        min_boxes: int | None = None,
        max_boxes: int | None = None,
        score_threshold: float | None = None,
        output_hidden_states: bool | None = None,
        boxes: Sequence[torch.Tensor] | None = None,
        **kwargs: object,
    ) -> ButdFrcnnModelOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                BGR, mean-subtracted, resized images, zero-padded at the bottom and right
                ([`ButdFrcnnImageProcessor`] makes them).
            image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
                Each image's resized `(height, width)` inside the padded batch; the whole tensor when omitted.
            scales (`torch.Tensor` of shape `(batch_size,)`, *optional*):
                Each image's resize factor; used in float32, as the original's `im_info`. Defaults to 1.
            original_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
                The images' `(height, width)` before resizing. The network does not need them (boxes are mapped back
                with `scales`, as in the original); they are returned with the output, which makes the boxes'
                frame explicit for post-processing.
            min_boxes, max_boxes, score_threshold (*optional*):
                Region selection of this call (e.g. 10/100/0.2 or 36/36/0.2); default to the config's.
            output_hidden_states (`bool`, *optional*):
                Also return the conv1, res2, res3 and res4 feature maps; defaults to the config's.
            boxes (sequence of `batch_size` float tensors of shape `(K_i, 4)`, *optional*):
                Regions to describe instead of detecting: per image, `(x1, y1, x2, y2)` in original-image pixels, the
                inclusive convention of the output's `boxes`. No RPN and no selection run: the output holds exactly
                these boxes, in this order (`K_i = 0` gives no region). Each box goes to the RoI head as the original
                maps its own RoIs: times the image's float32 scale, and RoI-pooled as it is, not clipped to the image
                (as the original's Fast R-CNN test mode does with given boxes): pooling bins that fall outside the
                image are empty and give 0, as in Caffe's ROIPooling. A box with no pixel inside the image (judged
                by `original_sizes`, or `image_sizes / scales` without them), a box with `x2 < x1` or `y2 < y1`, a
                value that is not finite, or a tensor that is not `(K, 4)` raise a `ValueError` naming the image and
                the box. The selection arguments do not apply.
            return_dict (`bool`, *optional*):
                A [`ButdFrcnnModelOutput`] (default, or the config's `return_dict`) or a plain tuple of its fields
                that are not `None`, in the same order (transformers' `can_return_tuple`).
        """
        if kwargs:
            raise TypeError(
                f"ButdFrcnnModel.forward got unexpected keyword arguments {sorted(kwargs)}; it takes the image "
                "processor's outputs (pixel_values, image_sizes, scales, original_sizes), min_boxes, max_boxes, "
                "score_threshold, output_hidden_states, boxes and return_dict"
            )
        config = self.config
        min_boxes = config.min_boxes if min_boxes is None else min_boxes
        max_boxes = config.max_boxes if max_boxes is None else max_boxes
        score_threshold = config.score_threshold if score_threshold is None else score_threshold
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        if not 0 < min_boxes <= max_boxes:
            raise ValueError(f"need 0 < min_boxes <= max_boxes, got min_boxes={min_boxes}, max_boxes={max_boxes}")

        pixel_values = pixel_values.to(self.compute_dtype())
        batch_size, _, height, width = pixel_values.shape
        device = pixel_values.device
        if config.precision == "tf32" and device.type != "cuda":
            raise ValueError(
                f"precision 'tf32' is a CUDA mode (TensorFloat-32 matrix units), but the input is on {device}: "
                "use 'fp32' or 'bf16' there"
            )
        if image_sizes is None:
            image_sizes = torch.tensor([[height, width]] * batch_size)
        if scales is None:
            scales = torch.ones(batch_size, dtype=torch.float64)
        if scales.dtype in (torch.float16, torch.bfloat16):
            raise ValueError("`scales` must stay float32 or float64: cast only `pixel_values` to a lower precision")
        # the original's im_info is float32: its min-size filter and box rescaling use the float32 scale
        scales = scales.to(device=device, dtype=torch.float32)
        if boxes is not None:
            extents = original_sizes if original_sizes is not None else image_sizes / scales.cpu().double()[:, None]
            boxes = given_boxes_per_image(boxes, extents, device)

        per_image: list[dict[str, torch.Tensor] | None] = [None] * batch_size
        hidden_states = None
        with cuda_float32_math(device, config.precision):
            for (image_height, image_width), indices in group_by_size(image_sizes).items():
                # images of one size run together, cropped to that size: padding never reaches the network
                images = pixel_values[indices, :, :image_height, :image_width]
                maps = self.backbone(images)
                if output_hidden_states:
                    hidden_states = scatter_feature_maps(hidden_states, maps, indices, batch_size)
                detections = self.detect_regions(
                    maps[-1],
                    image_height,
                    image_width,
                    scales[indices],
                    min_boxes=min_boxes,
                    max_boxes=max_boxes,
                    score_threshold=score_threshold,
                    boxes=None if boxes is None else [boxes[i] for i in indices],
                )
                for i, detection in zip(indices, detections):
                    per_image[i] = detection

        def stacked(key: str, pad: float = 0) -> torch.Tensor | None:
            values = [image[key] for image in per_image]
            return None if values[0] is None else pad_and_stack(values, pad)

        return ButdFrcnnModelOutput(
            region_features=stacked("region_features"),
            boxes=stacked("boxes"),
            object_ids=stacked("object_ids", -1),
            object_scores=stacked("object_scores"),
            attribute_ids=stacked("attribute_ids", -1),
            attribute_scores=stacked("attribute_scores"),
            num_boxes=torch.tensor([image["boxes"].shape[0] for image in per_image], device=device),
            proposals=stacked("proposals"),
            num_proposals=torch.tensor([image["proposals"].shape[0] for image in per_image], device=device),
            proposal_scores=stacked("proposal_scores"),
            proposal_features=stacked("proposal_features"),
            class_probs=stacked("class_probs"),
            attribute_probs=stacked("attribute_probs"),
            box_deltas=stacked("box_deltas"),
            hidden_states=hidden_states,
            original_sizes=None if original_sizes is None else original_sizes.to(device),
            proposal_indices=stacked("proposal_indices", -1),
            selection_scores=stacked("selection_scores"),
            settled_proposals=stacked("settled_proposals", False) if "settled_proposals" in per_image[0] else None,
        )

    def compute_dtype(self) -> torch.dtype:
        """The dtype the forward's layers compute in under `config.precision` (see [`ButdFrcnnConfig`]):
        bfloat16 or float16 for "bf16" / "fp16", else the weights' own dtype (float32 unless the model was cast)."""
        precision = self.config.precision
        if precision not in PRECISIONS:
            raise ValueError(f"config.precision={precision!r}: expected one of {PRECISIONS}")
        if precision in ("bf16", "fp16"):
            return torch.bfloat16 if precision == "bf16" else torch.float16
        if precision in ("fp32-screened", "tf32") and self.dtype != torch.float32:
            raise ValueError(
                f"precision {precision!r} needs float32 weights, but the model holds {self.dtype}: load it without "
                "`dtype=` (or `.to(torch.float32)`), or use precision 'bf16'"
            )
        return self.dtype

    def detect_regions(
        self,
        features: torch.Tensor,
        image_height: int,
        image_width: int,
        scales: torch.Tensor,
        *,
        min_boxes: int,
        max_boxes: int,
        score_threshold: float,
        boxes: Sequence[torch.Tensor] | None = None,
    ) -> list[dict[str, torch.Tensor | None]]:
        """Proposals, RoI heads and region selection of a batch of same-size images, from their res4 `features`.

        With `boxes` (per image, float32 `(K, 4)` in original-image pixels, checked by `given_boxes_per_image`), the
        given boxes replace the proposals and are the regions themselves: the RoI heads run on them exactly as on
        proposals (one entry point, `self.roi_heads`), and no selection runs.

        Returns:
            Per image, a dict with every per-image field of [`ButdFrcnnModelOutput`] (unpadded; `proposal_scores` is
            `None` for given boxes).
        """
        if boxes is None:
            proposals = self.proposal_generator(features, image_height, image_width, scales)
            original_boxes = [rois / scale for (rois, _), scale in zip(proposals, scales)]
            selection = {"min_boxes": min_boxes, "max_boxes": max_boxes, "score_threshold": score_threshold}
            heads = [
                self.heads_for_selection(features[image : image + 1], rois, original_boxes[image], **selection)
                for image, (rois, _) in enumerate(proposals)
            ]
            regions = self.select_batch(original_boxes, heads, **selection)
        else:
            # the original's own RoIs are in resized pixels: the given boxes are mapped there with the float32 scale
            proposals = [(given * scale, None) for given, scale in zip(boxes, scales)]
            # given boxes are not selected, so there is nothing to screen: "fp32-screened" computes them in float32
            heads = [self.roi_heads(features[image : image + 1], rois) for image, (rois, _) in enumerate(proposals)]
            regions = [
                describe_regions(torch.arange(len(given), device=given.device), given, head)
                for given, head in zip(boxes, heads)
            ]
        return [
            {"proposals": rois, "proposal_scores": objectness, **head.proposal_fields(), **image_regions}
            for (rois, objectness), head, image_regions in zip(proposals, heads, regions, strict=True)
        ]

    def heads_for_selection(
        self,
        features: torch.Tensor,
        rois: torch.Tensor,
        boxes: torch.Tensor,
        *,
        min_boxes: int,
        max_boxes: int,
        score_threshold: float,
    ) -> ButdFrcnnHeadOutputs:
        """The RoI heads on one image's proposals `rois` (resized pixels; `boxes`: the same in original pixels), as
        the selection needs them: all of them in the model's precision, or under "fp32-screened" what the selection
        needs in float32 (see `screened_roi_heads`)."""
        if self.config.precision != "fp32-screened":
            return self.roi_heads(features, rois)
        plan = functools.partial(
            screening_plan,
            boxes,
            score_threshold=score_threshold,
            min_boxes=min_boxes,
            max_boxes=max_boxes,
            nms_threshold=self.config.selection_nms_threshold,
            exact_ties=self.config.exact_tie_order,
        )
        return screened_roi_heads(self.roi_heads, features, rois, plan)

    def select(
        self,
        boxes: torch.Tensor,
        heads: ButdFrcnnHeadOutputs,
        min_boxes: int,
        max_boxes: int,
        score_threshold: float,
    ) -> dict[str, torch.Tensor]:
        """`generate_tsv.py`'s region selection for one image; boxes in original-image pixels."""
        return self.select_batch(
            [boxes], [heads], min_boxes=min_boxes, max_boxes=max_boxes, score_threshold=score_threshold
        )[0]

    def select_batch(
        self,
        boxes: Sequence[torch.Tensor],
        heads: Sequence[ButdFrcnnHeadOutputs],
        *,
        min_boxes: int,
        max_boxes: int,
        score_threshold: float,
    ) -> list[dict[str, torch.Tensor]]:
        """`select` for several images at once (per-image boxes and head outputs): one per-class NMS runs for all of
        them, and each image's result is the one it would get alone."""
        exact = self.config.exact_tie_order
        counts = [b.shape[0] for b in boxes]
        max_scores = per_class_nms_max_scores(
            pad_and_stack(list(boxes)),
            pad_and_stack([head.class_probs[:, 1:] for head in heads]),
            self.config.selection_nms_threshold,
            exact,
            num_boxes=counts,
        )
        selections = []
        for image, count in enumerate(counts):
            image_scores = max_scores[image, :count]
            keep = select_regions(image_scores, score_threshold, min_boxes, max_boxes, exact)
            selections.append(describe_regions(keep, boxes[image], heads[image], image_scores))
        return selections


def describe_regions(
    keep: torch.Tensor,
    boxes: torch.Tensor,
    heads: ButdFrcnnHeadOutputs,
    selection_scores: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The per-region output fields of the rows `keep` of one image's RoI-head outputs: features, boxes (original
    pixels), most probable object and attribute (background and "no attribute" left out), the rows themselves
    (`proposal_indices`) and their `selection_scores` (the object score where `None`: given boxes)."""
    objects = heads.class_probs[keep, 1:]
    attributes = heads.attribute_probs[keep, 1:]
    object_ids = torch.argmax(objects, dim=1)
    attribute_ids = torch.argmax(attributes, dim=1)
    object_scores = objects.gather(1, object_ids[:, None]).squeeze(1)
    return {
        "region_features": heads.region_features[keep],
        "boxes": boxes[keep],
        "object_ids": object_ids + 1,
        "object_scores": object_scores,
        "attribute_ids": attribute_ids + 1,
        "attribute_scores": attributes.gather(1, attribute_ids[:, None]).squeeze(1),
        "proposal_indices": keep,
        "selection_scores": object_scores if selection_scores is None else selection_scores[keep],
    }


def given_boxes_per_image(
    boxes: Sequence[torch.Tensor], image_extents: torch.Tensor, device: torch.device
) -> list[torch.Tensor]:
    """Check the `boxes` given to [`ButdFrcnnModel.forward`] and return them as float32 `(K, 4)` tensors on `device`.

    Args:
        boxes: one `(K, 4)` tensor (or nested list) of `(x1, y1, x2, y2)` per image, in original-image pixels.
        image_extents (`(batch_size, 2)`): each image's `(height, width)` in original pixels (real-valued when derived
            from the resized size and the scale).

    Raises:
        ValueError: naming the image (its index in the batch) and the box (its index and values) that is not
            `(K, 4)`, not finite, has `x2 < x1` or `y2 < y1`, or has no pixel inside the image.
    """
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2:
        raise ValueError("boxes takes one (K, 4) tensor per image: for one image pass [boxes]")
    boxes = list(boxes)
    image_extents = image_extents.detach().to("cpu", torch.float64)
    if len(boxes) != image_extents.shape[0]:
        raise ValueError(f"boxes gives {len(boxes)} entries for a batch of {image_extents.shape[0]} images")
    checked = []
    for image, (given, (height, width)) in enumerate(zip(boxes, image_extents.tolist())):
        given = torch.as_tensor(given)
        if given.dtype == torch.bool or given.is_complex() or given.dim() != 2 or given.shape[1] != 4:
            raise ValueError(
                f"boxes of image {image}: expected a (K, 4) real tensor of x1, y1, x2, y2, got {given.dtype} of "
                f"shape {tuple(given.shape)}"
            )
        given = given.detach().to("cpu", torch.float32)
        x1, y1, x2, y2 = given.unbind(dim=1)
        problems = (
            (~torch.isfinite(given).all(dim=1), "is not finite"),
            (x2 < x1, "has x2 < x1"),
            (y2 < y1, "has y2 < y1"),
            (
                (x1 > width - 1) | (y1 > height - 1) | (x2 < 0) | (y2 < 0),
                f"has no pixel inside the {width:g} x {height:g} image",
            ),
        )
        for bad, reason in problems:
            if bool(bad.any()):
                index = int(bad.nonzero()[0])
                raise ValueError(f"boxes of image {image}: box {index} {given[index].tolist()} {reason}")
        checked.append(given.to(device))
    return checked


def declare_object_detection_support() -> None:
    """Name this model in the table of object detectors that transformers' `object-detection` pipeline checks.

    transformers' way to support a custom model in its pipelines is to register it with the Auto class the pipeline
    loads (`AutoModelForObjectDetection.register`, which the package's `__init__` does, and which transformers does
    itself for remote code): `Pipeline.check_model_type` reaches registered models through the back-reference of
    `MODEL_FOR_*_MAPPING_NAMES` to its Auto mapping. In transformers 5.24 the object-detection pipeline checks a
    `.copy()` of that table, which drops the back-reference, so every registered model is reported as unsupported
    with an error listing ~200 names (tests/test_transformers_pins.py notices when that changes). Adding the model
    type to the table itself is what registration would have achieved; the Auto mappings still resolve the class
    through their registrations (they skip model types that `CONFIG_MAPPING_NAMES` does not list). Done when this
    file is imported, which both the installed package and remote code do before any pipeline checks the model.
    """
    MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.setdefault(ButdFrcnnConfig.model_type, ButdFrcnnModel.__name__)


declare_object_detection_support()


def declare_image_processor() -> None:
    """Register the model's image processor for its configuration with `AutoImageProcessor`.

    transformers 4's `pipeline()` loads an image processor only for a configuration type `AutoImageProcessor`
    knows, and loading a model as remote code registers it with the model's Auto class alone: without this, the
    `object-detection` pipeline of a Hub folder would run with no image processor. The installed package's
    `__init__` makes the same registration; done when this file is imported, before any pipeline looks.
    """
    register_image_processor(ButdFrcnnConfig, ButdFrcnnImageProcessor)


declare_image_processor()

__all__ = ["ButdFrcnnModel", "ButdFrcnnModelOutput", "ButdFrcnnPreTrainedModel"]
