"""Bottom-up-attention Faster R-CNN (BUTD region features) as a Hugging Face Transformers model.

Importing the package registers the classes with the Auto* factories, so that `AutoModel.from_pretrained` resolves
a converted folder without remote code. The one model class serves `AutoModel` (the `image-feature-extraction`
pipeline) and `AutoModelForObjectDetection` (the `object-detection` pipeline): its output carries the region
features first and the selected, labelled boxes that `post_process_object_detection` reads.
"""

from transformers import AutoConfig, AutoModel, AutoModelForObjectDetection

from .compat_butd_frcnn import register_image_processor
from .configuration_butd_frcnn import ButdFrcnnConfig
from .image_processing_butd_frcnn import ButdFrcnnImageProcessor
from .modeling_butd_frcnn import ButdFrcnnModel, ButdFrcnnModelOutput, ButdFrcnnPreTrainedModel

AutoConfig.register(ButdFrcnnConfig.model_type, ButdFrcnnConfig, exist_ok=True)
AutoModel.register(ButdFrcnnConfig, ButdFrcnnModel, exist_ok=True)
AutoModelForObjectDetection.register(ButdFrcnnConfig, ButdFrcnnModel, exist_ok=True)
register_image_processor(ButdFrcnnConfig, ButdFrcnnImageProcessor)

__version__ = "0.1.0"

__all__ = [
    "ButdFrcnnConfig",
    "ButdFrcnnImageProcessor",
    "ButdFrcnnModel",
    "ButdFrcnnModelOutput",
    "ButdFrcnnPreTrainedModel",
]
