"""What a converted folder needs on the Hub besides its weights: `auto_map` entries, so that it loads as remote code
(`trust_remote_code=True`, no package installed) through every Auto class the pipelines use, and the files that
ship next to the model (the Inference Endpoints handler and requirements, the attribute-aware pipeline)."""

from importlib import resources
from pathlib import Path

# the object-detection pipeline loads its model through AutoModelForObjectDetection; the feature-extraction one
# through AutoModel
MODEL_AUTO_CLASSES = ("AutoModel", "AutoModelForObjectDetection")
ENDPOINT_FILES = ("handler.py", "requirements.txt")
PIPELINE_FILE = "pipeline_butd_frcnn.py"


def register_for_remote_code(model, image_processor) -> None:
    """Make `save_pretrained` write the `auto_map` entries and copy the model's source files.

    `register_for_auto_class` records one Auto class per model class; the further entries of
    `MODEL_AUTO_CLASSES` go into `model.config.auto_map`, which `save_pretrained` keeps.
    """
    type(model.config).register_for_auto_class()
    type(model).register_for_auto_class(MODEL_AUTO_CLASSES[0])
    type(image_processor).register_for_auto_class("AutoImageProcessor")
    reference = f"{type(model).__module__.rsplit('.', 1)[-1]}.{type(model).__name__}"
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    auto_map.update({auto_class: reference for auto_class in MODEL_AUTO_CLASSES})
    model.config.auto_map = auto_map


def write_hub_files(folder: str | Path) -> list[Path]:
    """Copy the endpoint handler, its requirements and the attribute-aware pipeline into `folder`."""
    folder = Path(folder)
    sources = [resources.files("butd_frcnn.hub_templates").joinpath(name) for name in ENDPOINT_FILES]
    sources.append(resources.files("butd_frcnn").joinpath(PIPELINE_FILE))
    written = []
    for source in sources:
        target = folder / source.name
        target.write_bytes(source.read_bytes())
        written.append(target)
    return written
