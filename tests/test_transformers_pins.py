"""The parts of transformers the model files rely on beyond its public API, checked at whichever release is installed.

The model files run as Hub remote code under whatever transformers a user has, within the range that the package and
the Hub folder's requirements.txt declare; ci/test_at_end.sh runs these tests at both ends of that range (the floor in
ci/constraints-floor.txt, the newest releases in ci/constraints-newest.txt), the main suite in between. Where the
model files override an underscored hook of a transformers base class (because transformers offers no public one for
that job), this checks that the installed transformers lies in the declared range and that the hook exists there with
the signature we override; the behaviour behind each is tested by the model, processor and pipeline tests, which
thereby run against that same release.
"""

import inspect
from importlib import metadata

import pytest
from golden import REPO_ROOT
from packaging.requirements import Requirement
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES
from transformers.pipelines import ImageFeatureExtractionPipeline, ObjectDetectionPipeline

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnImageProcessor, ButdFrcnnModel, ButdFrcnnPreTrainedModel
from butd_frcnn.pipeline_butd_frcnn import ButdFrcnnImageFeatureExtractionPipeline, ButdFrcnnObjectDetectionPipeline


def declared(text: str, name: str) -> Requirement:
    """The requirement on `name` among the lines of a requirements file."""
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return next(Requirement(line) for line in lines if line and Requirement(line).name == name)


def test_installed_transformers_lies_in_the_declared_range():
    hub = declared((REPO_ROOT / "butd_frcnn" / "hub_templates" / "requirements.txt").read_text(), "transformers")
    package = next(r for r in map(Requirement, metadata.requires("butd-frcnn")) if r.name == "transformers")
    assert hub == package, "the package and the Hub requirements.txt must declare the same transformers range"
    installed = metadata.version("transformers")
    assert package.specifier.contains(installed), f"transformers {installed} installed, the package declares {package}"
    floor = declared((REPO_ROOT / "ci" / "constraints-floor.txt").read_text(), "transformers")
    newest = declared((REPO_ROOT / "ci" / "constraints-newest.txt").read_text(), "transformers")
    for end in (floor, newest):
        (version,) = (spec.version for spec in end.specifier)
        assert package.specifier.contains(version), f"the tested end {end} lies outside the declared {package}"


def parameters(function) -> list[tuple[str, inspect._ParameterKind]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


def test_init_weights_hook_of_pretrained_model():
    """transformers calls `_init_weights(module)` for every module it must initialise (meta-device loading included):
    our buffers and random weights come from it."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters(PreTrainedModel._init_weights) == [("self", keyword), ("module", keyword)]
    assert parameters(ButdFrcnnPreTrainedModel._init_weights) == [("self", keyword), ("module", keyword)]


def test_sanitize_parameters_hook_of_the_object_detection_pipeline():
    """Every pipeline routes its call arguments through `_sanitize_parameters(**kwargs)` into (preprocess, forward,
    postprocess) parameters; ours adds `attribute_in_label` and hands the rest to the stock one."""
    assert parameters(ObjectDetectionPipeline._sanitize_parameters) == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    pipeline = ButdFrcnnObjectDetectionPipeline.__new__(ButdFrcnnObjectDetectionPipeline)  # no model needed
    stock = ObjectDetectionPipeline._sanitize_parameters(pipeline, threshold=0.3, timeout=5)
    assert stock == ({"timeout": 5}, {}, {"threshold": 0.3})
    ours = pipeline._sanitize_parameters(threshold=0.3, attribute_in_label=True)
    assert ours == ({}, {}, {"threshold": 0.3, "attribute_in_label": True})


def test_sanitize_parameters_hook_of_the_image_feature_extraction_pipeline():
    """Ours adds `boxes` to the image processor's arguments and hands the rest to the stock one, which sends
    `image_processor_kwargs` to the image processor and silently drops arguments it does not know."""
    assert parameters(ImageFeatureExtractionPipeline._sanitize_parameters) == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("image_processor_kwargs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("return_tensors", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("pool", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    pipeline = ButdFrcnnImageFeatureExtractionPipeline.__new__(ButdFrcnnImageFeatureExtractionPipeline)
    stock = ImageFeatureExtractionPipeline._sanitize_parameters(pipeline, boxes=[[0, 0, 1, 1]], return_tensors=True)
    assert stock == ({}, {}, {"return_tensors": True}), "the stock pipeline drops boxes= (hence ours)"
    ours = pipeline._sanitize_parameters(boxes=[[0, 0, 1, 1]], image_processor_kwargs={"do_resize": False})
    assert ours == ({"do_resize": False, "boxes": [[0, 0, 1, 1]]}, {}, {})


def test_the_object_detection_pipeline_checks_a_copy_of_its_model_table():
    """Why `declare_object_detection_support` names the model in transformers' table of object detectors: the
    pipeline checks the model against `MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.copy()`, and the copy loses the
    back-reference through which `check_model_type` finds the models registered with `AutoModelForObjectDetection`.
    When this fails, transformers sees registered models again: drop the table entry (the quiet-pipeline tests in
    test_pipelines.py then show that registration alone suffices)."""
    source = inspect.getsource(ObjectDetectionPipeline.__init__)
    assert "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.copy()" in source
    assert hasattr(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, "_model_mapping")
    assert not hasattr(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.copy(), "_model_mapping")
    assert MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES["butd_frcnn"] == "ButdFrcnnModel"


@pytest.mark.parametrize(
    ("cls", "auto_class"),
    [(ButdFrcnnConfig, "AutoConfig"), (ButdFrcnnModel, "AutoModel"), (ButdFrcnnImageProcessor, "AutoImageProcessor")],
)
def test_classes_are_registered_for_their_auto_class_as_transformers_registers_them(cls, auto_class):
    """`save_pretrained` saves a class as remote code (its file, its relative imports, its `auto_map` entry) when the
    class attribute `_auto_class` is set: what `register_for_auto_class()` sets, and what transformers calls on the
    classes it loads as remote code. The package's classes carry that very value."""
    assert cls.__dict__["_auto_class"] == auto_class
    try:
        cls.register_for_auto_class()
        assert cls.__dict__["_auto_class"] == auto_class
    finally:
        cls._auto_class = auto_class
