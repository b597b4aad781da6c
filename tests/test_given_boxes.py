"""`model(**inputs, boxes=...)`: features, classes and attributes of given regions.

The test that cannot pass by accident: the detection run's own proposals, mapped back to original pixels as the
model maps its regions (`proposals / scale`, float32) and given as boxes, reproduce that run's `proposal_features`,
`class_probs`, `attribute_probs` and `box_deltas` bit for bit. The round trip `proposals / scale * scale` is exact
in float32 when the scale is a power of two (1 without resizing: checked below), and for 53-81% of the golden
images' proposals otherwise (the rest move by one ulp); RoI pooling rounds the corners to the 1/16 grid, so an ulp
changes nothing unless it crosses a rounding boundary, which the test checks did not happen (equal bins).
"""

import pytest
import torch
from golden import GOLDEN_IMAGES, golden_image_path

from butd_frcnn.ops_butd_frcnn import roi_pool_bins

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

HEAD_FIELDS = ("proposal_features", "class_probs", "attribute_probs", "box_deltas")
REGION_FIELDS = (
    "region_features", "boxes", "object_ids", "object_scores", "attribute_ids", "attribute_scores",
    "proposal_indices", "selection_scores",
)  # fmt: skip


def detected_then_given(model, inputs, index: int = 0):
    """Image `index`'s detection output, and the output for its proposals given back in original pixels."""
    detected = model(**inputs)
    count = int(detected.num_proposals[index])
    given = detected.proposals[index, :count] / inputs["scales"][index].float()
    batch = {key: value[index : index + 1] for key, value in inputs.items()}
    return detected, given, model(**batch, boxes=[given])


def assert_same_pooling_bins(a: torch.Tensor, b: torch.Tensor, model, feature_shape):
    heads = model.roi_heads
    for bins_a, bins_b in zip(
        roi_pool_bins(a, heads.pool_size, heads.spatial_scale, *feature_shape),
        roi_pool_bins(b, heads.pool_size, heads.spatial_scale, *feature_shape),
    ):
        assert torch.equal(bins_a, bins_b), "a round-trip ulp moved a pooling bin"


@pytest.mark.parametrize("name", list(GOLDEN_IMAGES))
def test_given_proposals_reproduce_the_detection_run(name, tiny_golden_model, processor):
    inputs = processor(str(golden_image_path(name)), return_tensors="pt")
    detected, given, described = detected_then_given(tiny_golden_model, inputs)
    count = int(detected.num_proposals[0])
    proposals = detected.proposals[0, :count]
    assert count == 300 and described.num_boxes.tolist() == described.num_proposals.tolist() == [count]
    rois = described.proposals[0]
    ulp = torch.nextafter(proposals.abs(), torch.tensor(float("inf"))) - proposals.abs()
    assert ((rois - proposals).abs() <= ulp).all(), "the round trip moves a corner by more than an ulp"
    height, width = (-(-int(size) // 16) for size in inputs["image_sizes"][0])
    assert_same_pooling_bins(rois, proposals, tiny_golden_model, (height, width))
    for field in HEAD_FIELDS:
        assert torch.equal(getattr(described, field)[0], getattr(detected, field)[0, :count]), field
    # every box is a region, in the given order, with the detection run's probabilities
    assert torch.equal(described.boxes[0], given)
    assert torch.equal(described.region_features[0], detected.proposal_features[0, :count])
    assert described.proposal_indices[0].tolist() == list(range(count))
    assert described.proposal_scores is None
    objects = detected.class_probs[0, :count, 1:]
    assert torch.equal(described.object_ids[0], objects.argmax(dim=1) + 1)
    assert torch.equal(described.object_scores[0], objects.amax(dim=1))
    assert torch.equal(described.selection_scores[0], described.object_scores[0])
    assert torch.equal(described.attribute_ids[0], detected.attribute_probs[0, :count, 1:].argmax(dim=1) + 1)


def test_without_resizing_the_round_trip_is_exact(tiny_golden_model, processor):
    inputs = processor(str(golden_image_path("noise_333x500")), do_resize=False, return_tensors="pt")
    detected, _, described = detected_then_given(tiny_golden_model, inputs)
    assert inputs["scales"].tolist() == [1.0]
    assert torch.equal(described.proposals[0], detected.proposals[0, : int(detected.num_proposals[0])])
    for field in HEAD_FIELDS:
        assert torch.equal(getattr(described, field)[0], getattr(detected, field)[0]), field


@pytest.mark.parametrize("name", ["astronaut", "gradient_500x375"])
def test_shuffled_boxes_give_shuffled_outputs(name, tiny_golden_model, processor):
    """Each region's results depend on its own box only, bit for bit (measured: no kernel rounds a row by its
    position)."""
    inputs = processor(str(golden_image_path(name)), return_tensors="pt")
    detected = tiny_golden_model(**inputs)
    boxes = detected.boxes[0, : int(detected.num_boxes[0])]
    order = torch.randperm(boxes.shape[0], generator=torch.Generator().manual_seed(1))
    described = tiny_golden_model(**inputs, boxes=[boxes])
    shuffled = tiny_golden_model(**inputs, boxes=[boxes[order]])
    for field in (*HEAD_FIELDS, *(field for field in REGION_FIELDS if field != "proposal_indices")):
        assert torch.equal(getattr(shuffled, field)[0], getattr(described, field)[0][order]), field
    # the detection run's selected regions, described alone, keep their detection results (bit for bit here; res5
    # and the heads then run on fewer rows, for which a BLAS may choose kernels that round differently)
    selected = detected.proposal_indices[0, : int(detected.num_boxes[0])]
    torch.testing.assert_close(described.region_features[0], detected.region_features[0, : selected.numel()])
    torch.testing.assert_close(described.class_probs[0], detected.class_probs[0, selected])


def test_a_batch_of_images_with_given_boxes_equals_one_by_one(tiny_golden_model, processor):
    """Different sizes and box counts, zero boxes included: padding is -1 / 0 and never changes a result."""
    names = ("rocket", "camera", "noise_333x500")
    boxes = [
        torch.tensor([[10.0, 20.0, 200.0, 180.0], [0.0, 0.0, 50.0, 40.0], [5.5, 7.25, 300.0, 250.0]]),
        torch.zeros((0, 4)),
        torch.tensor([[100.0, 50.0, 220.0, 200.0]]),
    ]
    inputs = processor([str(golden_image_path(name)) for name in names], return_tensors="pt")
    batched = tiny_golden_model(**inputs, boxes=boxes)
    assert batched.num_boxes.tolist() == batched.num_proposals.tolist() == [3, 0, 1]
    assert batched.region_features.shape[:2] == (3, 3)
    assert (batched.object_ids[1] == -1).all() and (batched.proposal_indices[1] == -1).all()
    assert (batched.region_features[1] == 0).all()
    for index, name in enumerate(names):
        alone = tiny_golden_model(**processor(str(golden_image_path(name)), return_tensors="pt"), boxes=[boxes[index]])
        count = len(boxes[index])
        for field in (*HEAD_FIELDS, *REGION_FIELDS):
            assert torch.equal(getattr(batched, field)[index, :count], getattr(alone, field)[0]), f"{name}: {field}"


def test_zero_boxes_give_zero_regions(tiny_golden_model, processor):
    inputs = processor(str(golden_image_path("astronaut")), return_tensors="pt")
    described = tiny_golden_model(**inputs, boxes=[torch.zeros((0, 4))])
    assert described.num_boxes.tolist() == [0] and described.region_features.shape == (1, 0, 256)
    assert described.class_probs.shape == (1, 0, 1601) and described.boxes.shape == (1, 0, 4)


def test_boxes_reaching_outside_the_image_are_pooled_as_given(tiny_golden_model, processor):
    """Not clipped: the part outside the image pools nothing (empty bins give 0, as Caffe's ROIPooling does), so the
    features differ from those of the clipped box, and equal the RoI head's own result on the unclipped RoI."""
    inputs = processor(str(golden_image_path("gradient_500x375")), return_tensors="pt")
    outside = torch.tensor([[-150.0, -100.0, 120.0, 90.0]])
    clipped = torch.tensor([[0.0, 0.0, 120.0, 90.0]])
    described = tiny_golden_model(**inputs, boxes=[outside], output_hidden_states=True)
    inside = tiny_golden_model(**inputs, boxes=[clipped])
    assert torch.equal(described.boxes[0], outside)
    assert not torch.allclose(described.region_features[0], inside.region_features[0], atol=1e-3)
    scale = inputs["scales"].float()
    heads = tiny_golden_model.roi_heads(described.hidden_states[-1], outside * scale)
    assert torch.equal(described.region_features[0], heads.region_features)
    assert torch.equal(described.class_probs[0], heads.class_probs)


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([torch.zeros((2, 5))], r"boxes of image 0: expected a \(K, 4\) real tensor .* shape \(2, 5\)"),
        ([torch.zeros(4)], r"boxes of image 0: expected a \(K, 4\)"),
        ([[[1.0, 2.0, 3.0, 4.0]], [[1.0, 2.0, 3.0, 4.0]]], "boxes gives 2 entries for a batch of 1 images"),
        (torch.tensor([[1.0, 2.0, 3.0, 4.0]]), r"one \(K, 4\) tensor per image"),
        ([[[0.0, 0.0, 10.0, 10.0], [1.0, float("nan"), 3.0, 4.0]]], r"box 1 \[1.0, nan, 3.0, 4.0\] is not finite"),
        ([[[0.0, 0.0, float("inf"), 10.0]]], r"box 0 \[0.0, 0.0, inf, 10.0\] is not finite"),
        ([[[0.0, 0.0, 10.0, 10.0], [30.0, 5.0, 20.0, 9.0]]], r"image 0: box 1 \[30.0, 5.0, 20.0, 9.0\] has x2 < x1"),
        ([[[0.0, 9.0, 10.0, 8.0]]], r"box 0 \[0.0, 9.0, 10.0, 8.0\] has y2 < y1"),
        ([[[500.0, 0.0, 600.0, 10.0]]], r"box 0 \[500.0, 0.0, 600.0, 10.0\] has no pixel inside the 500 x 375 image"),
        ([[[-20.0, -20.0, -1.0, 10.0]]], "has no pixel inside"),
        ([torch.ones((1, 4), dtype=torch.bool)], "real tensor"),
    ],
)
def test_bad_boxes_raise_a_value_error_naming_the_image_and_the_box(boxes, message, tiny_golden_model, processor):
    inputs = processor(str(golden_image_path("gradient_500x375")), return_tensors="pt")
    with pytest.raises(ValueError, match=message):
        tiny_golden_model(**inputs, boxes=boxes)


def test_the_image_named_is_the_one_with_the_bad_box(tiny_golden_model, processor):
    inputs = processor([str(golden_image_path("rocket")), str(golden_image_path("camera"))], return_tensors="pt")
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 4.0, 9.0]])]
    with pytest.raises(ValueError, match=r"boxes of image 1: box 1 \[5.0, 5.0, 4.0, 9.0\] has x2 < x1"):
        tiny_golden_model(**inputs, boxes=boxes)


def test_without_original_sizes_the_image_is_the_resized_one_over_the_scale(tiny_golden_model, processor):
    """A box on the last pixel column is inside; one a pixel further is not (500 x 375 image at scale 1.6)."""
    inputs = processor(str(golden_image_path("gradient_500x375")), return_tensors="pt")
    del inputs["original_sizes"]
    last_column = tiny_golden_model(**inputs, boxes=[[[499.0, 0.0, 499.0, 374.0]]])
    assert last_column.num_boxes.tolist() == [1]
    with pytest.raises(ValueError, match="no pixel inside the 500 x 375 image"):
        tiny_golden_model(**inputs, boxes=[[[500.0, 0.0, 510.0, 374.0]]])


def test_integer_and_float64_boxes_are_used_as_float32(tiny_golden_model, processor):
    inputs = processor(str(golden_image_path("camera")), return_tensors="pt")
    reference = tiny_golden_model(**inputs, boxes=[torch.tensor([[10.0, 20.0, 200.0, 180.0]])])
    for boxes in ([[10, 20, 200, 180]], torch.tensor([[10.0, 20.0, 200.0, 180.0]], dtype=torch.float64)):
        described = tiny_golden_model(**inputs, boxes=[boxes])
        assert described.boxes.dtype == torch.float32
        assert torch.equal(described.region_features, reference.region_features)


def test_detection_regions_index_their_proposals(tiny_golden_model, processor):
    """`proposal_indices` and `selection_scores` of a detection run: each region is its proposal's row, and its
    score is the per-class NMS `max_conf` the selection ranked it by (checked against the original's own arrays in
    the golden parity tests)."""
    inputs = processor([str(golden_image_path("astronaut")), str(golden_image_path("rocket"))], return_tensors="pt")
    detected = tiny_golden_model(**inputs, min_boxes=36, max_boxes=36)
    for image in range(2):
        count = int(detected.num_boxes[image])
        rows = detected.proposal_indices[image, :count]
        scale = inputs["scales"][image].float()
        assert torch.equal(detected.region_features[image, :count], detected.proposal_features[image, rows])
        assert torch.equal(detected.boxes[image, :count], detected.proposals[image, rows] / scale)
        scores = detected.selection_scores[image, :count]
        assert (scores[:-1] >= scores[1:]).all(), "36 of more than 36: the best first"
        assert (scores <= detected.object_scores[image, :count]).all()
