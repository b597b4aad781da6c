"""Original checkpoint -> Hub-ready folder (-> the Hub): the conversion tool as a Python function.

The folder holds `config.json` (with `auto_map` for remote code), `model.safetensors`, `preprocessor_config.json`,
the model's source files, an Inference Endpoints `handler.py` with its `requirements.txt`, the attribute-aware
pipeline `pipeline_butd_frcnn.py`, and a `README.md` rendered from `model_card.md`. It is written to a temporary folder
beside the destination and renamed into place only when complete, so that an error never leaves a half-written
folder behind.
"""

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configuration_butd_frcnn import ButdFrcnnConfig
from ..image_processing_butd_frcnn import ButdFrcnnImageProcessor
from ..modeling_butd_frcnn import ButdFrcnnModel
from ..remote_code import ENDPOINT_FILES, PIPELINE_FILE, model_files
from .checkpoints import read_checkpoint
from .errors import ConversionError
from .model_card import render_model_card
from .prototxt import check_prototxt, proposal_parameters, read_prototxt
from .push import HubClient, check_token, push_folder
from .vocab import attribute_names_from_vocabulary, id2label_from_vocabulary
from .weights import (
    ConversionReport,
    WeightMappingError,
    caffe_to_state_dict,
    config_from_caffe,
    infer_architecture,
)

logger = logging.getLogger(__name__)

# generate_tsv.py's region selections: the released "10-100" features and the "36 boxes" features.
SELECTION_PRESETS = {
    "10-100": {"min_boxes": 10, "max_boxes": 100, "score_threshold": 0.2},
    "36": {"min_boxes": 36, "max_boxes": 36, "score_threshold": 0.2},
}
# The two released checkpoints, and the features each was used for.
RELEASED_CHECKPOINTS = {
    "resnet101_faster_rcnn_final.caffemodel": "10-100",
    "resnet101_faster_rcnn_final_iter_320000.caffemodel": "36",
}
DEFAULT_PRESET = "10-100"
# what `save_pretrained` writes (the model files: those the model's code imports), and the card
EXPECTED_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    *model_files(),
    "README.md",
    *ENDPOINT_FILES,
    PIPELINE_FILE,
)


@dataclass
class ConversionResult:
    output_dir: Path
    config: ButdFrcnnConfig
    report: ConversionReport
    hub_url: str | None = None


def selection_preset(checkpoint: str | os.PathLike, boxes: str | None) -> str:
    """The preset asked for, else the one the released checkpoint of that file name was used for."""
    if boxes is not None:
        if boxes not in SELECTION_PRESETS:
            raise ConversionError(f"unknown box selection {boxes!r}: choose one of {', '.join(SELECTION_PRESETS)}")
        return boxes
    name = Path(checkpoint).name
    if name in RELEASED_CHECKPOINTS:
        return RELEASED_CHECKPOINTS[name]
    logger.info("%s is not a released checkpoint name: selection defaults to %s boxes", name, DEFAULT_PRESET)
    return DEFAULT_PRESET


def vocabulary_overrides(
    architecture: dict, objects_vocab: str | os.PathLike | None, attributes_vocab: str | os.PathLike | None
) -> tuple[dict, str]:
    """`id2label` / `attribute_names` from the vocabulary files, checked against the heads' sizes, and a line for
    the model card saying where the names come from."""
    overrides = {}
    if objects_vocab is not None:
        overrides["id2label"] = id2label_from_vocabulary(objects_vocab, architecture["num_labels"])
    if attributes_vocab is not None:
        overrides["attribute_names"] = attribute_names_from_vocabulary(
            attributes_vocab, architecture["num_attributes"]
        )
    given = [f"`{Path(path).name}`" for path in (objects_vocab, attributes_vocab) if path is not None]
    if not given:
        return overrides, "placeholders (`class_1`, ...; no vocabulary given)"
    return overrides, f"from {' and '.join(given)} (a class is named by its first synonym)"


def check_output_dir(output_dir: Path, overwrite: bool):
    """Refuse early what would fail late: an existing non-empty folder (unless `overwrite`), an unwritable place."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"{output_dir}: the folder exists and is not empty (pass overwrite to replace it)")
    parent = output_dir.parent
    if not parent.is_dir():
        raise ConversionError(f"{output_dir}: cannot create the output folder: {parent} is not an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConversionError(f"{output_dir}: cannot create the output folder: {parent} is not writable")


def _default_permissions(folder: Path):
    """What a plain `mkdir` / `open` would have given: temporary folders and some writers use owner-only modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _publish(staging: Path, output_dir: Path):
    """Move the complete `staging` folder to `output_dir`, replacing what is there only once the new one is ready."""
    previous = None
    if output_dir.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".old", dir=output_dir.parent))
        os.rename(output_dir, previous / output_dir.name)
    try:
        os.rename(staging, output_dir)
    except OSError:
        if previous is not None:
            os.rename(previous / output_dir.name, output_dir)
        raise
    finally:
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)


def save_model_folder(
    output_dir: str | os.PathLike,
    config: ButdFrcnnConfig,
    state_dict: dict[str, torch.Tensor],
    model_card: str,
    overwrite: bool = False,
):
    """Write the Hub-ready folder atomically (temporary folder, then rename)."""
    output_dir = Path(output_dir).absolute()
    check_output_dir(output_dir, overwrite)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    except OSError as error:
        raise ConversionError(f"{output_dir}: cannot create the output folder: {error.strerror}") from error
    try:
        with torch.device("meta"):
            model = ButdFrcnnModel(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        processor = ButdFrcnnImageProcessor()
        model.save_pretrained(staging)  # with the model files and the endpoint files (see remote_code.py)
        processor.save_pretrained(staging)
        (staging / "README.md").write_text(model_card, encoding="utf-8")
        missing = [name for name in EXPECTED_FILES if not (staging / name).is_file()]
        if missing:
            raise ConversionError(f"{output_dir}: saving left out {missing}")
        _default_permissions(staging)
        _publish(staging, output_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError(f"{output_dir}: writing the converted model failed: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert_caffemodel(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    prototxt: str | os.PathLike | None = None,
    objects_vocab: str | os.PathLike | None = None,
    attributes_vocab: str | os.PathLike | None = None,
    boxes: str | None = None,
    score_threshold: float | None = None,
    bn_factor: float | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    hub_api: HubClient | None = None,
) -> ConversionResult:
    """Convert a checkpoint of the original model into a Hub-ready folder, and push it when `push_to_hub` is given.

    Args:
        checkpoint: the original `.caffemodel`, a caffemodel2pytorch `.pt` or a transformers-research FRCNN
            state dict (`.bin` / `.pt`); the format is recognised from the file's content.
        output_dir: the folder to create (or to replace, with `overwrite`).
        prototxt: the original test `.prototxt`: the proposal layer's `feat_stride` and `scales` are taken from it,
            everything else in it is checked against the model.
        objects_vocab, attributes_vocab: `objects_vocab.txt` / `attributes_vocab.txt`, for `id2label` and
            `attribute_names` (placeholder names without them).
        boxes: the default region selection, `"10-100"` or `"36"`; by default the one the released checkpoint of
            that file name was used for (`resnet101_faster_rcnn_final.caffemodel`: 10-100,
            `..._final_iter_320000.caffemodel`: 36).
        score_threshold: overrides the preset's threshold.
        bn_factor: BatchNorm's moving-average factor, for files that lost it (caffemodel2pytorch keeps two blobs).
        push_to_hub: `org/name` of the Hub repository to push the folder to (with `private`, `revision`,
            `create_pr`, `token`; `hub_api` replaces `huggingface_hub.HfApi`).

    Raises:
        ConversionError: with a message naming the file, the layer and the shapes involved.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir).absolute()
    for path in (checkpoint, prototxt, objects_vocab, attributes_vocab):
        if path is not None and not Path(path).is_file():
            raise ConversionError(f"{path}: no such file")
    check_output_dir(output_dir, overwrite)
    if push_to_hub:  # before the work: a refused token stops here, a Hub out of reach is said now
        token, warning = check_token(token, hub_api)
        if warning:
            logger.warning(
                "%s. Converting anyway: the push at the end needs the Hub; if it fails, the folder stays complete "
                "and `hf upload %s %s` pushes it later.",
                warning,
                push_to_hub,
                output_dir,
            )

    definition = read_prototxt(prototxt) if prototxt is not None else None
    net, source_format, notes = read_checkpoint(checkpoint, bn_factor)
    logger.info("read %s (%s, %d layers)", checkpoint, source_format, len(net.layers))
    overrides = dict(SELECTION_PRESETS[selection_preset(checkpoint, boxes)])
    if score_threshold is not None:
        overrides["score_threshold"] = score_threshold
    if definition is not None:
        overrides.update(proposal_parameters(definition))
    labels, vocabulary = vocabulary_overrides(infer_architecture(net), objects_vocab, attributes_vocab)
    overrides.update(labels)

    try:
        config = config_from_caffe(net, **overrides)
    except WeightMappingError as error:
        if definition is None:
            raise
        raise WeightMappingError(f"{error} (with the proposal-layer parameters of {definition.path})") from None
    state_dict, report = caffe_to_state_dict(net, config)
    if definition is not None:
        check_prototxt(definition, config, net)
        notes.append(f"proposal-layer parameters from {Path(definition.path).name}, the rest of it checked")
    del net
    report.source, report.source_format, report.notes = os.fspath(checkpoint), source_format, notes

    card = render_model_card(config, report, model_id=push_to_hub or output_dir.name, vocabulary=vocabulary)
    save_model_folder(output_dir, config, state_dict, card, overwrite=overwrite)
    logger.info("wrote %s in %.1f s", output_dir, time.perf_counter() - started)
    result = ConversionResult(output_dir=output_dir, config=config, report=report)
    if push_to_hub:
        result.hub_url = push_folder(
            output_dir, push_to_hub, private=private, revision=revision, create_pr=create_pr, token=token, api=hub_api
        )
    return result
