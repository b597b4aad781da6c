"""Loading the model and its image processor from a converted folder or the Hugging Face Hub, with errors that say
what to do when that fails."""

import logging
import os
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from transformers import AutoImageProcessor, AutoModel
from transformers.utils import logging as transformers_logging

from .. import ButdFrcnnImageProcessor, ButdFrcnnModel
from ..configuration_butd_frcnn import PRECISIONS
from ..hub_errors import capitalised, hub_failure, one_line
from .defaults import PRECISION_CHOICES, canonical_precision
from .records import ExtractionError

logger = logging.getLogger(__name__)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _check_local_folder(folder: Path) -> None:
    if not folder.is_dir():
        hint = (
            " Convert it first: butd-frcnn convert WEIGHTS.caffemodel FOLDER."
            if folder.suffix == ".caffemodel"
            else ""
        )
        raise ExtractionError(f"--model {folder}: expected a converted model folder, got a file.{hint}")
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise ExtractionError(
            f"--model {folder}: the folder lacks {', '.join(missing)}; point it at a folder written by "
            "`butd-frcnn convert` (or `save_pretrained`)"
        )


def looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_device(device: str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExtractionError("--device cuda: no CUDA device is available here; use --device cpu")
    return device


def load_model(name: str, device: torch.device, precision: str) -> tuple[ButdFrcnnModel, ButdFrcnnImageProcessor]:
    """The model (in eval mode, on `device`, its float32 weights computing with `precision`, a
    `ButdFrcnnConfig.precision` or one of its `DTYPE_SPELLINGS`) and its image processor.

    Args:
        name: a local folder (`butd-frcnn convert` output) or a Hub id such as `<org>/butd-frcnn`.
    """
    if canonical_precision(precision) not in PRECISIONS:
        raise ExtractionError(f"--dtype {precision}: expected one of {', '.join(PRECISION_CHOICES)}")
    if canonical_precision(precision) == "tf32" and device.type != "cuda":
        raise ExtractionError(
            f"--dtype tf32 runs on CUDA only (TensorFloat-32 units), not on {device}: use fp32 or bf16"
        )
    folder = Path(name).expanduser()
    if folder.exists():
        _check_local_folder(folder)
        source = str(folder)
    elif looks_like_path(name):
        raise ExtractionError(f"--model {name}: no such folder")
    else:
        source = name
    transformers_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except Exception as error:
        failure = None if folder.exists() else hub_failure(error)
        if failure is None and not isinstance(error, OSError):
            raise
        if folder.exists():
            raise ExtractionError(f"--model {folder}: cannot load it: {one_line(str(error))}") from error
        if failure is not None:
            why = f"downloading it failed: {failure.reason()}. {capitalised(failure.remedy)}"
        elif hub_constants.HF_HUB_OFFLINE:
            why = "the Hub is switched off here (HF_HUB_OFFLINE=1)"
        else:
            why = "it could not be downloaded (no network, a wrong name, or a gated repository)"
        raise ExtractionError(
            f"--model {name}: not a local folder, and {why}. Nothing was written. Either pass a converted folder "
            f"(butd-frcnn convert WEIGHTS.caffemodel FOLDER), or download it once where there is network (hf download "
            f"{name}) so that it loads from the cache. Details: {one_line(str(error))}"
        ) from error
    if not isinstance(model, ButdFrcnnModel):
        raise ExtractionError(f"--model {name}: a {type(model).__name__}, not a butd_frcnn model")
    if not isinstance(processor, ButdFrcnnImageProcessor):
        raise ExtractionError(f"--model {name}: its image processor is a {type(processor).__name__}")
    model.config.precision = canonical_precision(precision)
    return model.eval().to(device), processor


def model_revision(name: str) -> str | None:
    """The commit of a Hub model as this machine has it cached (what `load_model` loaded); None for a local folder
    or a model that is not cached."""
    if Path(name).expanduser().exists() or looks_like_path(name):
        return None
    config = try_to_load_from_cache(name, "config.json")
    return Path(config).parent.name if isinstance(config, str) else None
