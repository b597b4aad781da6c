"""The parts of transformers and huggingface_hub whose names or shapes changed between the oldest releases the
model supports (transformers 4.51.3 with huggingface_hub 0.30.2, the Inference Endpoints server's) and transformers
5. The model files import them from here, so that they run, as the package and as Hub remote code, on either.

Each name is the transformers 5 one where it exists; otherwise the transformers 4 equivalent, shaped to behave as
the model files expect (the tests in ci/test_at_end.sh check that the results are the same bits at both ends).
"""

import functools
import inspect
from types import SimpleNamespace

import torch

try:  # huggingface_hub >= 0.32
    from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassError
except ImportError:

    class StrictDataclassError(Exception):
        """A configuration failed its validation (huggingface_hub's name for it)."""

    class StrictDataclassClassValidationError(StrictDataclassError):
        """One of the configuration's `validate_*` methods rejected it."""


try:  # transformers 5: configurations are huggingface_hub strict dataclasses
    from huggingface_hub.dataclasses import strict
    from transformers import PreTrainedConfig
except ImportError:
    from transformers import PretrainedConfig

    class PreTrainedConfig(PretrainedConfig):
        """transformers 5's dataclass configuration on transformers 4: a subclass's annotated class attributes are
        its fields (keyword arguments defaulting to those attributes); the other keyword arguments reach
        `__post_init__`, whose last step is `PretrainedConfig.__init__` (as `PreTrainedConfig.__post_init__` is in
        transformers 5)."""

        def __init__(self, **kwargs):
            for name, default in config_fields(type(self)).items():
                setattr(self, name, kwargs.pop(name, default))
            # fields of transformers 5's base class that a subclass's `__post_init__` may read
            self.id2label = kwargs.pop("id2label", None)
            self.label2id = kwargs.pop("label2id", None)
            self.__post_init__(**kwargs)

        def __post_init__(self, **kwargs):
            PretrainedConfig.__init__(self, id2label=self.id2label, label2id=self.label2id, **kwargs)

    def config_fields(cls: type) -> dict:
        """Name and default of each field of a `PreTrainedConfig` subclass, base classes first."""
        fields = {}
        for klass in reversed(cls.__mro__[: cls.__mro__.index(PreTrainedConfig)]):
            for name in inspect.get_annotations(klass):
                fields[name] = getattr(cls, name)
        return fields

    def strict(cls: type) -> type:
        """huggingface_hub's `@strict` where it does not exist: after `__init__`, every `validate_*` method runs, and
        what it raises becomes a `StrictDataclassClassValidationError`, as there (field types are not checked)."""
        initialise = cls.__init__

        @functools.wraps(initialise)
        def __init__(self, **kwargs):
            initialise(self, **kwargs)
            self.validate()

        def validate(self):
            for name in sorted(dir(type(self))):
                if name.startswith("validate_") and callable(getattr(type(self), name)):
                    try:
                        getattr(self, name)()
                    except (ValueError, TypeError) as error:
                        raise StrictDataclassClassValidationError(
                            f"Class validation error for validator '{name}':\n    {type(error).__name__}: {error}"
                        ) from error

        cls.__init__ = __init__
        cls.validate = validate
        return cls


try:  # transformers 5: initialisers that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4 itself skips the modules a checkpoint fills

    @torch.no_grad()
    def _copy(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return tensor.copy_(other)

    init = SimpleNamespace(
        constant_=torch.nn.init.constant_,
        zeros_=torch.nn.init.zeros_,
        ones_=torch.nn.init.ones_,
        normal_=torch.nn.init.normal_,
        kaiming_normal_=torch.nn.init.kaiming_normal_,
        copy_=_copy,
    )


try:  # transformers 5
    from transformers.image_processing_backends import TorchvisionBackend
except ImportError:  # transformers 4: the same base class, under its earlier name
    from transformers.image_processing_utils_fast import BaseImageProcessorFast as TorchvisionBackend


def register_image_processor(config_class: type, image_processor_class: type) -> None:
    """`AutoImageProcessor.register` for a processor on the torchvision backend, in the keywords of either release."""
    from transformers import AutoImageProcessor

    try:  # transformers 5
        AutoImageProcessor.register(
            config_class, image_processor_classes={"torchvision": image_processor_class}, exist_ok=True
        )
    except TypeError:  # transformers 4: the same backend was called "fast"
        AutoImageProcessor.register(config_class, fast_image_processor_class=image_processor_class, exist_ok=True)


__all__ = [
    "PreTrainedConfig",
    "StrictDataclassClassValidationError",
    "StrictDataclassError",
    "TorchvisionBackend",
    "init",
    "register_image_processor",
    "strict",
]
