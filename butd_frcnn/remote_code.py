"""What a saved folder needs to load without the package (Hub remote code, `trust_remote_code=True`): `auto_map`
entries for every Auto class the pipelines use, the model's source files, and the files that ship next to the model
(the Inference Endpoints handler and requirements, the attribute-aware pipeline)."""

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from .configuration_butd_frcnn import ButdFrcnnConfig
from .image_processing_butd_frcnn import ButdFrcnnImageProcessor
from .modeling_butd_frcnn import ButdFrcnnModel

# The flat files the model runs from. `save_pretrained` copies the file of each registered class and, recursively,
# the files it imports relatively (`modeling_butd_frcnn.py` imports the configuration, the ops, the kernels and the
# precision modes); tests check that this list is exactly what transformers finds.
MODEL_FILES = (
    "configuration_butd_frcnn.py",
    "modeling_butd_frcnn.py",
    "ops_butd_frcnn.py",
    "kernels_butd_frcnn.py",
    "precision_butd_frcnn.py",
    "image_processing_butd_frcnn.py",
    "compat_butd_frcnn.py",
)
# the object-detection pipeline loads its model through AutoModelForObjectDetection; the feature-extraction one
# through AutoModel
MODEL_AUTO_CLASSES = ("AutoModel", "AutoModelForObjectDetection")
ENDPOINT_FILES = ("handler.py", "requirements.txt")
PIPELINE_FILE = "pipeline_butd_frcnn.py"

_UNSET = object()


@contextmanager
def registered_for_remote_code(model: ButdFrcnnModel | None = None) -> Iterator[None]:
    """While saving: `save_pretrained` writes `auto_map` entries and copies `MODEL_FILES`, so that the folder loads
    as remote code.

    `register_for_auto_class` records one Auto class per class, as a class attribute: it is undone afterwards so
    that it does not leak into other saves. With `model`, its config also maps the further entries of
    `MODEL_AUTO_CLASSES` (`save_pretrained` keeps `config.auto_map`).
    """
    classes = {
        ButdFrcnnConfig: "AutoConfig",
        ButdFrcnnModel: MODEL_AUTO_CLASSES[0],
        ButdFrcnnImageProcessor: "AutoImageProcessor",
    }
    previous = {cls: cls.__dict__.get("_auto_class", _UNSET) for cls in classes}
    for cls, auto_class in classes.items():
        cls.register_for_auto_class(auto_class)
    if model is not None:
        reference = f"{type(model).__module__.rsplit('.', 1)[-1]}.{type(model).__name__}"
        auto_map = dict(getattr(model.config, "auto_map", None) or {})
        auto_map.update({auto_class: reference for auto_class in MODEL_AUTO_CLASSES})
        model.config.auto_map = auto_map
    try:
        yield
    finally:
        for cls, value in previous.items():
            if value is _UNSET:
                del cls._auto_class
            else:
                cls._auto_class = value


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
