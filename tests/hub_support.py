"""Helpers of the Hub tests: a converted TINY model folder carrying the real vocabularies, and a Python subprocess in
which the butd_frcnn package cannot be imported (what a Hub user without the package has)."""

import json
from pathlib import Path

import torch
from golden import GOLDEN, VOCAB, golden_image_path
from huggingface_hub import ObjectDetectionOutputElement
from remote import run_without_package as run_code_without_package

# Proposals kept by the RPN: 100 instead of 300 makes every forward (and so these tests) about three times faster;
# the selection still has realistic scores and counts, and what is compared is always the model's own output.
PROPOSALS = 100


def save_tiny_hub_folder(folder: Path) -> Path:
    """The golden TINY weights converted with the real Visual Genome vocabularies by `butd-frcnn convert`'s function:
    weights, config with auto_map, preprocessor config, model sources, endpoint files, pipeline, model card."""
    from butd_frcnn.conversion.convert import convert_caffemodel

    convert_caffemodel(
        GOLDEN / "tiny_seed0.caffemodel",
        folder,
        objects_vocab=VOCAB / "objects_vocab.txt",
        attributes_vocab=VOCAB / "attributes_vocab.txt",
    )
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["rpn_post_nms_top_n"] = PROPOSALS
    config_path.write_text(json.dumps(config, indent=2))
    return folder


def run_without_package(code: str, workdir: Path) -> dict:
    """Run `code` in a fresh Python that cannot import butd_frcnn (and has its own HF cache, offline); the code
    prints one JSON document as its last line of output, returned here."""
    completed = run_code_without_package(code + "\n_assert_package_never_imported()\n", workdir)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def model_regions(hub_folder, image, **selection) -> tuple:
    """The model's own output for one image (a golden image's name, or any input of the processor; installed
    package; `selection` may be `boxes=[...]`), with its config for the names."""
    from butd_frcnn import ButdFrcnnImageProcessor, ButdFrcnnModel

    model = ButdFrcnnModel.from_pretrained(hub_folder).eval()
    processor = ButdFrcnnImageProcessor.from_pretrained(hub_folder)
    source = str(golden_image_path(image)) if isinstance(image, str) else image
    return model.config, model(**processor(source, return_tensors="pt"), **selection)


def assert_detections_are_the_kept_regions(response: list, config, outputs, minimum_score: float) -> None:
    """`response` is the object-detection list of the regions of `outputs` whose object score reaches
    `minimum_score`, in the model's order, as huggingface_hub's own parser reads it."""
    parsed = ObjectDetectionOutputElement.parse_obj_as_list(json.dumps(response).encode())
    count = int(outputs.num_boxes[0])
    scores = outputs.object_scores[0, :count]
    kept = (scores.double() >= minimum_score).nonzero().flatten().tolist()
    assert len(parsed) == len(kept)
    for element, index in zip(parsed, kept):
        assert element.score == scores[index].item()
        assert element.label == config.id2label[int(outputs.object_ids[0, index])]
        box = [element.box.xmin, element.box.ymin, element.box.xmax, element.box.ymax]
        assert box == [int(v) for v in outputs.boxes[0, index].tolist()]
        assert all(isinstance(v, int) for v in box)
        assert element.attribute == config.attribute_names[int(outputs.attribute_ids[0, index])]
        assert element.attribute_score == outputs.attribute_scores[0, index].item()


def assert_response_is_the_selection(response: dict, config, outputs, image_size: tuple[int, int]):
    count = int(outputs.num_boxes[0])
    assert response["image_size"] == {"height": image_size[0], "width": image_size[1]}
    assert response["num_boxes"] == count
    assert torch.equal(torch.tensor(response["boxes"]), outputs.boxes[0, :count])
    assert response["label_ids"] == outputs.object_ids[0, :count].tolist()
    assert response["labels"] == [config.id2label[i] for i in response["label_ids"]]
    assert torch.equal(torch.tensor(response["scores"]), outputs.object_scores[0, :count])
    assert response["attribute_ids"] == outputs.attribute_ids[0, :count].tolist()
    assert response["attributes"] == [config.attribute_names[i] for i in response["attribute_ids"]]
    assert torch.equal(torch.tensor(response["attribute_scores"]), outputs.attribute_scores[0, :count])
