"""Bottom-up-attention Faster R-CNN (BUTD region features) as a Hugging Face Transformers model."""

from .configuration_butd_frcnn import ButdFrcnnConfig
from .modeling_butd_frcnn import ButdFrcnnModel, ButdFrcnnModelOutput, ButdFrcnnPreTrainedModel

__all__ = ["ButdFrcnnConfig", "ButdFrcnnModel", "ButdFrcnnModelOutput", "ButdFrcnnPreTrainedModel"]
