"""Configuration of the bottom-up-attention (BUTD) Faster R-CNN.

Every number of the original Caffe test network and of `tools/generate_tsv.py` is a field here, with the
original value as its default, so that the modeling code holds no magic numbers and small variants (the tests'
and the golden TINY network's) are expressible.
"""

from .compat_butd_frcnn import PreTrainedConfig, strict

BACKGROUND_LABEL = "__background__"
NO_ATTRIBUTE_LABEL = "__no_attribute__"


PRECISIONS = ("fp32", "bf16", "fp16", "fp32-screened", "tf32")


def placeholder_id2label(num_labels: int) -> dict[int, str]:
    """Class names for a model whose vocabulary is not known (index 0 is the background class)."""
    return {0: BACKGROUND_LABEL, **{i: f"class_{i}" for i in range(1, num_labels)}}


def placeholder_attribute_names(num_attributes: int) -> list[str]:
    """Attribute names for a model whose vocabulary is not known (index 0 means "no attribute")."""
    return [NO_ATTRIBUTE_LABEL] + [f"attribute_{i}" for i in range(1, num_attributes)]


@strict
class ButdFrcnnConfig(PreTrainedConfig):
    r"""
    Configuration for [`ButdFrcnnModel`]: a ResNet C4 Faster R-CNN with an attribute head, as in "Bottom-Up and
    Top-Down Attention for Image Captioning and Visual Question Answering" (Anderson et al., CVPR 2018). The defaults
    describe the released Visual Genome model (ResNet-101, 1600 objects + background, 400 attributes + "none").

    Backbone:
        num_channels (`int`, defaults to 3): input channels (BGR).
        stem_channels (`int`, defaults to 64): output channels of `conv1` (7x7, stride 2, pad 3).
        depths (`list[int]`, defaults to `[3, 4, 23, 3]`): bottleneck blocks in res2, res3, res4 and res5.
        hidden_sizes (`list[int]`, defaults to `[256, 512, 1024, 2048]`): output channels of each stage.
        bottleneck_sizes (`list[int]`, defaults to `[64, 128, 256, 512]`): inner width of each stage's blocks.
        stage_strides (`list[int]`, defaults to `[1, 2, 2, 1]`): stride of each stage's first block (Caffe puts it
            on the first 1x1 conv and the projection shortcut).
        stage_dilations (`list[int]`, defaults to `[1, 1, 1, 2]`): dilation (and padding) of each stage's 3x3
            convs; res5 runs at stride 1, dilation 2 on the 14x14 pooled regions.
        batch_norm_eps (`float`, defaults to 1e-5): the `eps` of Caffe's BatchNorm layers.

    Region proposal network:
        rpn_hidden_size (`int`, defaults to 512): channels of `rpn_conv/3x3`.
        feature_stride (`int`, defaults to 16): stride of res4 relative to the input; anchors are shifted by it.
        anchor_base_size (`int`, defaults to 16): side of the base anchor `(0, 0, 15, 15)` of `generate_anchors`.
        anchor_ratios (`list[float]`, defaults to `[0.5, 1.0, 2.0]`): aspect ratios (height / width).
        anchor_scales (`list[float]`, defaults to `[4, 8, 16, 32]`): scales of the base anchor.
        rpn_pre_nms_top_n (`int`, defaults to 6000): proposals kept by objectness before NMS.
        rpn_post_nms_top_n (`int`, defaults to 300): proposals kept after NMS: the regions of the RoI head.
        rpn_nms_threshold (`float`, defaults to 0.7): IoU at which NMS suppresses a proposal (`>=`).
        rpn_min_size (`int`, defaults to 16): minimum proposal side, in input pixels times the image scale.

    Region-of-interest head:
        roi_pool_size (`int`, defaults to 14): output side of Caffe's ROIPooling (max over bins).
        roi_head_chunk_size (`int`, defaults to 64): regions sent through res5 at once; bounds peak memory and
            has no effect on the results.
        num_attributes (`int`, defaults to 401): attribute logits, index 0 meaning "no attribute".
        attribute_names (`list[str]`, *optional*): name of each attribute index (`num_attributes` entries).
        class_embedding_size (`int`, defaults to 256): width of the `cls_embedding` of the predicted class.
        attribute_hidden_size (`int`, defaults to 512): width of `fc_attr`.
        id2label (`dict[int, str]`, *optional*): the classes, index 0 being the background (1601 by default).

    Region selection (`generate_tsv.py`):
        min_boxes (`int`, defaults to 10), max_boxes (`int`, defaults to 100), score_threshold (`float`, defaults
            to 0.2): keep the regions whose best per-class-NMS score reaches the threshold, but at least `min_boxes`
            and at most `max_boxes` of them. The "36 boxes" features use `min_boxes = max_boxes = 36`.
        selection_nms_threshold (`float`, defaults to 0.3): IoU of the per-class NMS of the selection.

    Sorting:
        exact_tie_order (`bool`, defaults to `True`): order exactly tied scores as the original's numpy 1.x sort did
            (flat image regions, and proposals that round to the same RoI-pooling cells, tie exactly). Scores are
            sorted on the model's device either way; with `True`, the rows where a tie decides the order are sorted
            again on the CPU, as the original did. `False` keeps the device's stable order (lower index first),
            which differs from the original only where scores tie exactly.

    Precision:
        precision (`str`, defaults to `"fp32"`): how the forward computes. Also a `from_pretrained` argument
            (`ButdFrcnnModel.from_pretrained(path, precision="bf16")`) and `butd-frcnn extract --dtype`. One of:

            - `"fp32"`: float32 throughout, the original's numbers (see the package's `docs/parity.md`). A model
              whose weights were cast to another dtype (`model.to(torch.bfloat16)`, `from_pretrained(...,
              dtype=...)`) computes in that dtype, as any PyTorch module; on CUDA, convolutions and matrix
              products run in full float32 (no TF32) during the forward.
            - `"bf16"`: every layer in bfloat16 (float32 weights are used through bfloat16 copies, kept as derived
              weights), anchors, box arithmetic, softmaxes and the selection in float32: 2-3x faster on CPUs with
              bf16 units; the selection then differs from fp32's where two regions score within bf16's rounding
              (measured by `benchmarks/agreement.py`).
            - `"fp16"`: the same in float16 (fast only where the hardware has float16 units).
            - `"fp32-screened"`: fp32's results (the same regions, in the same order, with the same features,
              classes, attributes and scores), the region head screened in bfloat16: the backbone and proposals
              run in float32; res5 runs in bfloat16 on every proposal, then again in float32 on the proposals
              whose exact scores can change the selection (and on the selected ones), round by round until the
              selection is certain. The output's `settled_proposals` says which proposals hold float32 values.
              Exact, except where two regions' float32 scores tie exactly (the same allowed difference as against
              the original). It saves time where bf16 is much faster than float32 and few proposals are in doubt
              (trained weights' peaked class scores, CPUs with AMX, GPUs); with flat scores it settles most
              proposals and is slower than fp32. Regions given by the caller (not proposals) get plain fp32.
            - `"tf32"` (CUDA only): float32 tensors, convolutions and matrix products in TensorFloat-32 during the
              forward (set around the model's own operations only, restored after). A CPU has no TF32: an error.

    Example:
    ```python
    >>> from butd_frcnn import ButdFrcnnConfig, ButdFrcnnModel
    >>> config = ButdFrcnnConfig(depths=[1, 1, 1, 1], stem_channels=8, hidden_sizes=[32, 64, 128, 256],
    ...                          bottleneck_sizes=[8, 16, 32, 64], rpn_hidden_size=64)
    >>> model = ButdFrcnnModel(config)
    ```
    """

    model_type = "butd_frcnn"
    # saved as remote code (this file and its `auto_map` entry), as transformers saves the classes it loads as such
    _auto_class = "AutoConfig"

    num_channels: int = 3
    stem_channels: int = 64
    depths: list[int] | tuple[int, ...] = (3, 4, 23, 3)
    hidden_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048)
    bottleneck_sizes: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    stage_strides: list[int] | tuple[int, ...] = (1, 2, 2, 1)
    stage_dilations: list[int] | tuple[int, ...] = (1, 1, 1, 2)
    batch_norm_eps: float = 1e-5

    rpn_hidden_size: int = 512
    feature_stride: int = 16
    anchor_base_size: int = 16
    anchor_ratios: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_scales: list[float] | tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    rpn_pre_nms_top_n: int = 6000
    rpn_post_nms_top_n: int = 300
    rpn_nms_threshold: float = 0.7
    rpn_min_size: int = 16

    roi_pool_size: int = 14
    roi_head_chunk_size: int = 64
    num_attributes: int = 401
    attribute_names: list[str] | None = None
    class_embedding_size: int = 256
    attribute_hidden_size: int = 512

    min_boxes: int = 10
    max_boxes: int = 100
    score_threshold: float = 0.2
    selection_nms_threshold: float = 0.3
    exact_tie_order: bool = True

    precision: str = "fp32"

    def __post_init__(self, **kwargs):
        for name in ("depths", "hidden_sizes", "bottleneck_sizes", "stage_strides", "stage_dilations"):
            setattr(self, name, [int(v) for v in getattr(self, name)])
        self.anchor_ratios = [float(v) for v in self.anchor_ratios]
        self.anchor_scales = [float(v) for v in self.anchor_scales]
        if self.id2label is None:
            self.id2label = placeholder_id2label(kwargs.pop("num_labels", 1601))
            self.label2id = {name: i for i, name in self.id2label.items()}
        if self.attribute_names is None:
            self.attribute_names = placeholder_attribute_names(self.num_attributes)
        else:
            self.attribute_names = list(self.attribute_names)
        super().__post_init__(**kwargs)

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell: one per (ratio, scale) pair."""
        return len(self.anchor_ratios) * len(self.anchor_scales)

    @property
    def id2attribute(self) -> dict[int, str]:
        return dict(enumerate(self.attribute_names))

    def validate_precision(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"ButdFrcnnConfig: precision={self.precision!r}, expected one of {PRECISIONS}")

    def validate_architecture(self):
        """Reject inconsistent numbers early, with the field names in the message."""
        per_stage = ("depths", "hidden_sizes", "bottleneck_sizes", "stage_strides", "stage_dilations")
        lengths = {name: len(getattr(self, name)) for name in per_stage}
        if set(lengths.values()) != {4}:
            raise ValueError(
                f"ButdFrcnnConfig: {per_stage} need one entry per stage res2..res5, got lengths {lengths}"
            )
        if min(self.depths) < 1:
            raise ValueError(f"ButdFrcnnConfig: every stage needs at least one block, got depths={self.depths}")
        # conv1 and pool1 each halve the input; res2..res4 add their own strides: that is where res4 lives.
        res4_stride = 4 * self.stage_strides[0] * self.stage_strides[1] * self.stage_strides[2]
        if res4_stride != self.feature_stride:
            raise ValueError(
                f"ButdFrcnnConfig: feature_stride={self.feature_stride} but stage_strides={self.stage_strides} put "
                f"res4 at stride {res4_stride}"
            )
        if len(self.id2label) < 2:
            raise ValueError("ButdFrcnnConfig: id2label needs the background (index 0) and at least one class")
        if len(self.attribute_names) != self.num_attributes:
            raise ValueError(
                f"ButdFrcnnConfig: {len(self.attribute_names)} attribute_names for num_attributes={self.num_attributes}"
            )
        if not 0 < self.min_boxes <= self.max_boxes:
            raise ValueError(
                f"ButdFrcnnConfig: need 0 < min_boxes <= max_boxes, got {self.min_boxes} and {self.max_boxes}"
            )


__all__ = ["ButdFrcnnConfig"]
