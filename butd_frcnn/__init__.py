"""Bottom-up-attention Faster R-CNN (BUTD region features) as a Hugging Face Transformers model.

Importing the package registers the classes with the Auto* factories, so that `AutoModel.from_pretrained` resolves
a converted folder without remote code. The one model class serves `AutoModel` (the `image-feature-extraction`
pipeline) and `AutoModelForObjectDetection` (the `object-detection` pipeline): its output carries the region
features first and the selected, labelled boxes that `post_process_object_detection` reads. A saved model carries
what it needs to load as remote code where the package is not installed (see `remote_code.py`).

The package itself imports neither torch nor transformers, so that the `butd-frcnn` command line (a submodule)
starts in a fraction of a second: the classes load on first use (`butd_frcnn.ButdFrcnnModel`, as transformers'
own lazy modules do), and the registration happens now if transformers is already imported, else right after it
is (an Auto* factory cannot be reached before that).
"""

import importlib.abc
import sys

from .lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ButdFrcnnConfig": "configuration_butd_frcnn",
    "ButdFrcnnImageProcessor": "image_processing_butd_frcnn",
    "ButdFrcnnModel": "modeling_butd_frcnn",
    "ButdFrcnnModelOutput": "modeling_butd_frcnn",
    "ButdFrcnnPreTrainedModel": "modeling_butd_frcnn",
}
__all__ = [
    "ButdFrcnnConfig",
    "ButdFrcnnImageProcessor",
    "ButdFrcnnModel",
    "ButdFrcnnModelOutput",
    "ButdFrcnnPreTrainedModel",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def _register_with_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForObjectDetection

    from .compat_butd_frcnn import register_image_processor
    from .configuration_butd_frcnn import ButdFrcnnConfig
    from .image_processing_butd_frcnn import ButdFrcnnImageProcessor
    from .modeling_butd_frcnn import ButdFrcnnModel

    AutoConfig.register(ButdFrcnnConfig.model_type, ButdFrcnnConfig, exist_ok=True)
    AutoModel.register(ButdFrcnnConfig, ButdFrcnnModel, exist_ok=True)
    AutoModelForObjectDetection.register(ButdFrcnnConfig, ButdFrcnnModel, exist_ok=True)
    register_image_processor(ButdFrcnnConfig, ButdFrcnnImageProcessor)
    try:
        from transformers import AutoVideoProcessor
    except ImportError:  # transformers before 4.52 has no video processors (and its pipelines look for none)
        AutoVideoProcessor = None
    if AutoVideoProcessor is not None:
        # The model has no video processor, and says so: every pipeline also looks for one, and without a
        # registration it would read the folder's `AutoImageProcessor` entry as remote code for a video processor
        # and ask whether to run it.
        AutoVideoProcessor.register(ButdFrcnnConfig, None, exist_ok=True)

    from .remote_code import write_hub_files

    # a saved model carries the files a Hub folder has next to the model (its code is copied by transformers)
    ButdFrcnnModel.save_companion_files = staticmethod(write_hub_files)


class _RegisterOnceImported(importlib.abc.MetaPathFinder):
    """Registers the classes as soon as transformers is imported and none of the model files is half-imported (a
    model file importing transformers must finish before its classes can be registered). It finds nothing itself:
    it asks the other finders and runs the registration after the module that they load has executed."""

    watched = ("transformers", *sorted({f"{__name__}.{module}" for module in _EXPORTS.values()}))

    def __init__(self):
        self.executing: set[str] = set()
        self.registering = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.watched:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *_: None)(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = self._executing_then_registering(fullname, spec.loader.exec_module)
        return spec

    def _executing_then_registering(self, fullname, exec_module):
        def exec_then_register(module):
            self.executing.add(fullname)
            try:
                exec_module(module)
            finally:
                self.executing.discard(fullname)
            self.register_if_ready()

        return exec_then_register

    def register_if_ready(self) -> None:
        if self.registering or self.executing or "transformers" not in sys.modules:
            return
        self.registering = True
        try:
            _register_with_auto_classes()
        finally:
            self.registering = False
        if self in sys.meta_path:
            sys.meta_path.remove(self)


if "transformers" in sys.modules:
    _register_with_auto_classes()
else:
    sys.meta_path.insert(0, _RegisterOnceImported())
