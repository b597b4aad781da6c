"""`post_process_object_detection` and the `object-detection` / `image-feature-extraction` pipelines on a converted
TINY folder: with the package installed, and as remote code in a process that cannot import the package. Whatever
the route, the detections must be the model's own selection, given regions get the model's own features, and
creating a pipeline logs no error."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from golden import golden_image_path
from hub_support import run_without_package, save_tiny_hub_folder

# the model runs with gradients off here, as users run it for features (tests about gradients turn them on)
pytestmark = pytest.mark.usefixtures("no_grad")

IMAGES = ("astronaut", "rocket")  # 22 and 13 selected regions: together, a padded batch
GIVEN_BOXES = [[10.0, 20.0, 200.0, 180.0], [0.0, 0.0, 50.0, 40.0], [120.5, 60.25, 400.0, 500.0]]


@contextmanager
def transformers_errors() -> Iterator[list[logging.LogRecord]]:
    """What transformers logs at error level meanwhile (its loggers do not propagate to the root: listen on its
    library logger itself)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, shared_dir):
    return save_tiny_hub_folder(tmp_path_factory.mktemp("hub") / "butd-frcnn-tiny")


@pytest.fixture(scope="module")
def reference(hub_folder):
    """The model's own output for both images, run as one padded batch."""
    from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel

    model = ButdFrcnnModel.from_pretrained(hub_folder).eval()
    processor = ButdFrcnnImageProcessor.from_pretrained(hub_folder)
    inputs = processor([str(golden_image_path(name)) for name in IMAGES], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.num_boxes.tolist() == [22, 13]
    return model, processor, outputs


def expected_detections(reference, image_index: int = 0, threshold: float = 0.0) -> list[dict]:
    """What the pipeline must say about image `image_index`: the model's regions, in its order."""
    model, _, outputs = reference
    count = int(outputs.num_boxes[image_index])
    scores = outputs.object_scores[image_index, :count]
    keep = scores >= threshold
    return [
        {
            "score": score,
            "label": model.config.id2label[label],
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box)),
            "attribute": model.config.attribute_names[attribute],
        }
        for score, label, box, attribute in zip(
            scores[keep].tolist(),
            outputs.object_ids[image_index, :count][keep].tolist(),
            outputs.boxes[image_index, :count][keep].int().tolist(),
            outputs.attribute_ids[image_index, :count][keep].tolist(),
        )
    ]


def assert_same_detections(actual: list[dict], expected: list[dict], with_attributes: bool = False):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got["box"] == want["box"]
        assert got["score"] == pytest.approx(want["score"], rel=1e-6)
        if with_attributes:
            assert got["attribute"] == want["attribute"]
            assert got["label"] == f"{want['attribute']} {want['label']}"
        else:
            assert got["label"] == want["label"]


# ---------------------------------------------------------------------------------------------------------------
# post_process_object_detection
# ---------------------------------------------------------------------------------------------------------------


def test_post_process_returns_each_images_selection_without_padding(reference):
    model, processor, outputs = reference
    detections = processor.post_process_object_detection(outputs, threshold=0.0)
    assert len(detections) == len(IMAGES)
    for i, image in enumerate(detections):
        count = int(outputs.num_boxes[i])
        assert set(image) == {"scores", "labels", "boxes", "attributes", "attribute_scores"}
        assert torch.equal(image["boxes"], outputs.boxes[i, :count])
        assert torch.equal(image["scores"], outputs.object_scores[i, :count])
        assert torch.equal(image["labels"], outputs.object_ids[i, :count])
        assert torch.equal(image["attributes"], outputs.attribute_ids[i, :count])
        assert torch.equal(image["attribute_scores"], outputs.attribute_scores[i, :count])
        # no padding (-1) leaks: every label names a class, every attribute an attribute
        assert image["labels"].min() >= 1 and image["labels"].max() < len(model.config.id2label)
        assert image["attributes"].min() >= 1 and image["attributes"].max() < model.config.num_attributes


def test_post_process_threshold_keeps_the_regions_scoring_at_least_it_in_model_order(reference):
    _, processor, outputs = reference
    scores = outputs.object_scores[0, : int(outputs.num_boxes[0])]
    threshold = float(scores.median())
    kept = processor.post_process_object_detection(outputs, threshold=threshold)[0]
    expected = torch.nonzero(scores >= threshold).flatten()
    assert 0 < expected.numel() < scores.numel()
    assert torch.equal(kept["scores"], scores[expected])
    assert torch.equal(kept["boxes"], outputs.boxes[0, expected])
    assert processor.post_process_object_detection(outputs, threshold=1.01)[0]["boxes"].shape == (0, 4)


def test_post_process_rescales_boxes_only_to_a_different_target_size(reference):
    _, processor, outputs = reference
    original = outputs.original_sizes
    same = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=original.tolist())
    for i, image in enumerate(same):
        assert torch.equal(image["boxes"], outputs.boxes[i, : int(outputs.num_boxes[i])])

    target = original * torch.tensor([2, 3])  # (height, width): y doubles, x triples
    scaled = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target)
    for i, image in enumerate(scaled):
        boxes = outputs.boxes[i, : int(outputs.num_boxes[i])]
        torch.testing.assert_close(image["boxes"], boxes * torch.tensor([3.0, 2.0, 3.0, 2.0]))


def test_post_process_refuses_target_sizes_it_cannot_honour(reference):
    _, processor, outputs = reference
    with pytest.raises(ValueError, match="2 images"):
        processor.post_process_object_detection(outputs, target_sizes=[(10, 10)])
    without_sizes = {key: value for key, value in outputs.items() if key != "original_sizes"}
    with pytest.raises(ValueError, match="original_sizes"):
        processor.post_process_object_detection(without_sizes, target_sizes=outputs.original_sizes)
    # without target sizes nothing else is needed
    assert len(processor.post_process_object_detection(without_sizes, threshold=0.0)[1]["boxes"]) == 13


# ---------------------------------------------------------------------------------------------------------------
# Pipelines, package installed
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["object-detection", "image-feature-extraction"])
def test_creating_a_pipeline_logs_no_error(hub_folder, task):
    """The object-detection pipeline checks its model against transformers' table of detectors and logs an error
    listing ~200 names for any other model: ours must be in it (see `declare_object_detection_support`)."""
    from transformers import pipeline

    with transformers_errors() as errors:
        created = pipeline(task, model=str(hub_folder), trust_remote_code=False)
    assert created.task == task
    assert [record.getMessage()[:200] for record in errors] == []


def test_object_detection_pipeline_installed(hub_folder, reference):
    from transformers import pipeline

    from butd_frcnn import ButdFrcnnModel

    detector = pipeline("object-detection", model=str(hub_folder), trust_remote_code=False)
    assert type(detector.model) is ButdFrcnnModel
    image = str(golden_image_path(IMAGES[0]))
    assert_same_detections(detector(image, threshold=0.0), expected_detections(reference))


def test_image_feature_extraction_pipeline_returns_the_region_features(hub_folder, reference):
    from transformers import pipeline

    extractor = pipeline("image-feature-extraction", model=str(hub_folder), trust_remote_code=False)
    features = extractor(str(golden_image_path(IMAGES[1])), return_tensors=True)
    _, _, outputs = reference
    torch.testing.assert_close(features, outputs.region_features[1:2, :13], rtol=0, atol=0)


def test_feature_extraction_pipeline_describes_given_boxes(hub_folder, reference):
    """`boxes=` with our pipeline class, `image_processor_kwargs={"boxes": ...}` with the stock one: the model's own
    features of exactly those regions, in that order."""
    from transformers import pipeline

    from butd_frcnn.pipeline_butd_frcnn import ButdFrcnnImageFeatureExtractionPipeline

    model, processor, _ = reference
    image = str(golden_image_path(IMAGES[0]))
    expected = model(**processor(image, boxes=GIVEN_BOXES, return_tensors="pt")).region_features
    assert expected.shape == (1, len(GIVEN_BOXES), 256)
    assert torch.equal(expected, model(**processor(image, return_tensors="pt"), boxes=[GIVEN_BOXES]).region_features)
    ours = pipeline(
        "image-feature-extraction",
        model=str(hub_folder),
        trust_remote_code=False,
        pipeline_class=ButdFrcnnImageFeatureExtractionPipeline,
    )
    assert torch.equal(ours(image, boxes=GIVEN_BOXES, return_tensors=True), expected)
    stock = pipeline("image-feature-extraction", model=str(hub_folder), trust_remote_code=False)
    given = stock(image, image_processor_kwargs={"boxes": GIVEN_BOXES}, return_tensors=True)
    assert torch.equal(given, expected)
    detected = ours(image, return_tensors=True)
    assert detected.shape == (1, 22, 256), "without boxes, the selected regions"
    with pytest.raises(ValueError, match="regions of one image"):
        ours([image, image], boxes=GIVEN_BOXES)


def test_attribute_pipeline_labels_read_attribute_object(hub_folder, reference):
    from transformers import pipeline

    from butd_frcnn.pipeline_butd_frcnn import ButdFrcnnObjectDetectionPipeline

    detector = pipeline(
        "object-detection",
        model=str(hub_folder),
        trust_remote_code=False,
        pipeline_class=ButdFrcnnObjectDetectionPipeline,
        attribute_in_label=True,
    )
    threshold = 0.5
    detections = detector(str(golden_image_path(IMAGES[0])), threshold=threshold)
    expected = expected_detections(reference, threshold=threshold)
    assert 0 < len(expected) < 22
    assert_same_detections(detections, expected, with_attributes=True)
    assert all(0 < d["attribute_score"] <= 1 for d in detections)


# ---------------------------------------------------------------------------------------------------------------
# Pipelines as remote code: a process that cannot import butd_frcnn
# ---------------------------------------------------------------------------------------------------------------

REMOTE_PIPELINES = """
import json
import logging
from transformers import pipeline
from transformers.dynamic_module_utils import get_class_from_dynamic_module

errors = []
handler = logging.Handler(level=logging.ERROR)
handler.emit = lambda record: errors.append(record.getMessage()[:200])
logging.getLogger("transformers").addHandler(handler)
folder, detection_image, feature_image = {folder!r}, {detection_image!r}, {feature_image!r}
detector = pipeline("object-detection", model=folder, trust_remote_code=True)
extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
pipeline_class = get_class_from_dynamic_module("pipeline_butd_frcnn.ButdFrcnnObjectDetectionPipeline", folder)
attribute_detector = pipeline("object-detection", model=folder, trust_remote_code=True, pipeline_class=pipeline_class)
feature_class = get_class_from_dynamic_module("pipeline_butd_frcnn.ButdFrcnnImageFeatureExtractionPipeline", folder)
region_extractor = pipeline(
    "image-feature-extraction", model=folder, trust_remote_code=True, pipeline_class=feature_class
)
print(json.dumps({{
    "modules": [type(detector.model).__module__, type(detector.image_processor).__module__, pipeline_class.__module__],
    "errors": errors,
    "detections": detector(detection_image, threshold=0.0),
    "features": extractor(feature_image),
    "attribute_detections": attribute_detector(detection_image, threshold=0.5, attribute_in_label=True),
    "given_features": region_extractor(detection_image, boxes={given_boxes!r}),
}}))
"""


def test_pipelines_as_remote_code_without_the_package(hub_folder, reference, tmp_path):
    code = REMOTE_PIPELINES.format(
        folder=str(hub_folder),
        detection_image=str(golden_image_path(IMAGES[0])),
        feature_image=str(golden_image_path(IMAGES[1])),
        given_boxes=GIVEN_BOXES,
    )
    result = run_without_package(code, tmp_path)
    assert all(module.startswith("transformers_modules.") for module in result["modules"]), result["modules"]
    assert result["errors"] == [], "creating the pipelines logged an error"
    assert_same_detections(result["detections"], expected_detections(reference))
    assert_same_detections(
        result["attribute_detections"], expected_detections(reference, threshold=0.5), with_attributes=True
    )
    _, _, outputs = reference
    torch.testing.assert_close(torch.tensor(result["features"]), outputs.region_features[1:2, :13], rtol=0, atol=0)
    model, processor, _ = reference
    expected = model(**processor(str(golden_image_path(IMAGES[0])), boxes=GIVEN_BOXES, return_tensors="pt"))
    torch.testing.assert_close(torch.tensor(result["given_features"]), expected.region_features, rtol=0, atol=0)
