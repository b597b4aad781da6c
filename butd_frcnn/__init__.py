"""Bottom-up-attention Faster R-CNN (BUTD region features) as a Hugging Face Transformers model.

Importing the package registers the classes with the Auto* factories, so that `AutoModel.from_pretrained` resolves
a converted folder without remote code. The one model class serves `AutoModel` (the `image-feature-extraction`
pipeline) and `AutoModelForObjectDetection` (the `object-detection` pipeline): its output carries the region
features first and the selected, labelled boxes that `post_process_object_detection` reads. A saved model carries
what it needs to load as remote code where the package is not installed (see `remote_code.py`).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection

try:
    from transformers import AutoVideoProcessor
except ImportError:  # transformers before 4.52 has no video processors (and its pipelines look for none)
    AutoVideoProcessor = None

from .configuration_butd_frcnn import ButdFrcnnConfig
from .image_processing_butd_frcnn import ButdFrcnnImageProcessor
from .modeling_butd_frcnn import ButdFrcnnModel, ButdFrcnnModelOutput, ButdFrcnnPreTrainedModel
from .remote_code import write_hub_files

AutoConfig.register(ButdFrcnnConfig.model_type, ButdFrcnnConfig, exist_ok=True)
AutoModel.register(ButdFrcnnConfig, ButdFrcnnModel, exist_ok=True)
AutoModelForObjectDetection.register(ButdFrcnnConfig, ButdFrcnnModel, exist_ok=True)
AutoImageProcessor.register(
    ButdFrcnnConfig, image_processor_classes={"torchvision": ButdFrcnnImageProcessor}, exist_ok=True
)
if AutoVideoProcessor is not None:
    # The model has no video processor, and says so: every pipeline also looks for one, and without a registration
    # it would read the folder's `AutoImageProcessor` entry as remote code for a video processor and ask whether to
    # run it.
    AutoVideoProcessor.register(ButdFrcnnConfig, None, exist_ok=True)

# a saved model carries the files a Hub folder has next to the model (its code is copied by transformers)
ButdFrcnnModel.save_companion_files = staticmethod(write_hub_files)

__version__ = "0.1.0"

__all__ = [
    "ButdFrcnnConfig",
    "ButdFrcnnImageProcessor",
    "ButdFrcnnModel",
    "ButdFrcnnModelOutput",
    "ButdFrcnnPreTrainedModel",
]
