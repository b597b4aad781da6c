"""What a saved folder needs to load without the package (Hub remote code, `trust_remote_code=True`).

transformers saves the code itself: the configuration, model and image processor classes are registered for their
Auto classes (`_auto_class`, as transformers registers the classes it loads as remote code), so `save_pretrained`
copies each class's file and, recursively, the files it imports relatively (`custom_object_save`), and writes the
`auto_map` entries. What it cannot know about ships here: the Inference Endpoints handler and its requirements, and
the attribute-aware pipeline, written next to the model by `ButdFrcnnModel.save_pretrained` once the package sets
`ButdFrcnnModel.save_companion_files` (its `__init__` does).
"""

import sys
from importlib import resources
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files

from .configuration_butd_frcnn import ButdFrcnnConfig
from .image_processing_butd_frcnn import ButdFrcnnImageProcessor
from .modeling_butd_frcnn import ButdFrcnnModel

ENDPOINT_FILES = ("handler.py", "requirements.txt")
PIPELINE_FILE = "pipeline_butd_frcnn.py"
# the classes `save_pretrained` saves as remote code
REMOTE_CODE_CLASSES = (ButdFrcnnConfig, ButdFrcnnModel, ButdFrcnnImageProcessor)


def model_files() -> list[str]:
    """The source files the model runs from, as `save_pretrained` copies them: the file of each class saved as remote
    code and every file those import relatively (so the list follows the model files' own imports)."""
    names = []
    for cls in REMOTE_CODE_CLASSES:
        module_file = sys.modules[cls.__module__].__file__
        for path in [module_file, *get_relative_import_files(module_file)]:
            if Path(path).name not in names:
                names.append(Path(path).name)
    return names


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
