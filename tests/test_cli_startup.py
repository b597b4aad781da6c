"""The command line starts without torch or transformers (`--help` in a fraction of a second), and the package
still registers its classes with transformers' Auto* factories however the two are imported. Fresh interpreters:
what a process imports at start is the point."""

import subprocess
import sys

import pytest
from extraction_helpers import cli_env

from butd_frcnn.configuration_butd_frcnn import PRECISIONS
from butd_frcnn.extraction.defaults import PRECISIONS as CLI_PRECISIONS

HEAVY = ("torch", "transformers")


def imported_modules(*args: str) -> set[str]:
    """The modules a fresh `python -X importtime ARGS` imports (importtime lists each one on stderr)."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", *args], env=cli_env(), capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [line.split("|")[-1].strip() for line in completed.stderr.splitlines() if line.startswith("import time:")]
    return set(lines)


@pytest.mark.parametrize(
    "command", [[], ["extract"], ["merge"], ["convert"], ["compare"], ["show"]], ids=lambda command: " ".join(command)
)
def test_help_imports_neither_torch_nor_transformers(command):
    modules = imported_modules("-m", "butd_frcnn.cli", *command, "--help")
    assert "butd_frcnn.cli" in modules or "butd_frcnn" in modules  # the listing is real
    heavy = sorted(name for name in modules if name.split(".")[0] in HEAVY)
    assert not heavy, f"`butd-frcnn {' '.join(command)} --help` imports {heavy[:5]}"


REGISTERED = """
import sys
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from butd_frcnn.configuration_butd_frcnn import ButdFrcnnConfig
from butd_frcnn.image_processing_butd_frcnn import ButdFrcnnImageProcessor
from butd_frcnn.modeling_butd_frcnn import ButdFrcnnModel
assert CONFIG_MAPPING[ButdFrcnnConfig.model_type] is ButdFrcnnConfig
assert AutoModel._model_mapping[ButdFrcnnConfig] is ButdFrcnnModel
assert AutoModelForObjectDetection._model_mapping[ButdFrcnnConfig] is ButdFrcnnModel
assert AutoImageProcessor.register  # the processor: resolved from a config of model_type butd_frcnn
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
assert ButdFrcnnImageProcessor in IMAGE_PROCESSOR_MAPPING[ButdFrcnnConfig].values()
print("registered")
"""


@pytest.mark.parametrize(
    "first",
    [
        "import butd_frcnn",  # the package first, transformers after it
        "import transformers; import butd_frcnn",  # transformers already there
        "from butd_frcnn.modeling_butd_frcnn import ButdFrcnnModel",  # a model file that imports transformers itself
        "from butd_frcnn import ButdFrcnnConfig",  # a lazily loaded class
    ],
)
def test_importing_the_package_registers_the_classes(first):
    completed = subprocess.run(
        [sys.executable, "-c", f"{first}\n{REGISTERED}"], env=cli_env(), capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0 and completed.stdout.strip() == "registered", completed.stderr[-3000:]


def test_help_lists_the_configs_precisions():
    assert CLI_PRECISIONS == PRECISIONS


def test_the_extraction_package_exports_the_function_once_its_module_is_loaded():
    """`extract` names both a function and the submodule defining it: loading the submodule first (as the command
    line does) must leave `butd_frcnn.extraction.extract` the function."""
    code = (
        "import importlib, types\n"
        "importlib.import_module('butd_frcnn.extraction.extract')\n"
        "from butd_frcnn.extraction import ExtractOptions, extract\n"
        "assert isinstance(extract, types.FunctionType), extract\n"
        "print('function')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0 and completed.stdout.strip() == "function", completed.stderr[-3000:]
