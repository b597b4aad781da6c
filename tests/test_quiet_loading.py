"""With the package imported, every way the README loads a converted folder uses the installed classes and never
considers the folder's own code: no "Do you wish to run the custom code?" prompt, no warning, nothing imported from
the folder. Without the package, the folder's code runs only when asked for with `trust_remote_code=True`.

The paths run in a fresh process with standard input closed (a prompt cannot be answered there: transformers prints
it and goes on or fails), warnings shown (`-W always`, transformers' default verbosity) and progress bars off, so
that anything it writes to stderr is a warning.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hub_support import run_without_package, save_tiny_hub_folder

PROMPT = "contains custom code"

# (name, code): the code loads `folder` and sets `loaded` to the objects whose classes must be the installed ones
PATHS = {
    "AutoConfig": "loaded = [AutoConfig.from_pretrained(folder)]",
    "AutoModel": "loaded = [AutoModel.from_pretrained(folder)]",
    "AutoModelForObjectDetection": "loaded = [AutoModelForObjectDetection.from_pretrained(folder)]",
    "AutoImageProcessor": "loaded = [AutoImageProcessor.from_pretrained(folder)]",
    "object-detection": "created = pipeline('object-detection', model=folder)",
    "image-feature-extraction": "created = pipeline('image-feature-extraction', model=folder)",
    # the README's forms
    "object-detection, trust_remote_code=False": (
        "created = pipeline('object-detection', model=folder, trust_remote_code=False)"
    ),
    "image-feature-extraction, trust_remote_code=False": (
        "created = pipeline('image-feature-extraction', model=folder, trust_remote_code=False)"
    ),
    "object-detection, attribute pipeline": (
        "created = pipeline('object-detection', model=folder, pipeline_class=ButdFrcnnObjectDetectionPipeline)"
    ),
}

WITH_PACKAGE = """
import json
import sys
import traceback

import butd_frcnn
from butd_frcnn.pipeline_butd_frcnn import ButdFrcnnObjectDetectionPipeline
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection, pipeline

folder = {folder!r}
for name, code in {paths!r}.items():
    print(MARK + name, flush=True)
    print(MARK + name, file=sys.stderr, flush=True)
    namespace = dict(globals())
    try:
        exec(code, namespace)
        loaded = namespace.get("loaded")
        if loaded is None:
            created = namespace["created"]
            loaded = [created, created.model, created.model.config, created.image_processor]
        result = {{"modules": [type(thing).__module__ for thing in loaded]}}
    except BaseException:
        result = {{"error": traceback.format_exc()}}
    result["folder_code"] = [module for module in sys.modules if module.startswith("transformers_modules")]
    print(json.dumps(result), flush=True)
"""
MARK = "@@@ path: "


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, shared_dir):
    return save_tiny_hub_folder(tmp_path_factory.mktemp("hub") / "butd-frcnn-tiny")


def run_with_package(code: str, workdir: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh Python that imports the package as the tests do, stdin closed, warnings on."""
    environment = {key: value for key, value in os.environ.items() if key != "TRANSFORMERS_VERBOSITY"}
    environment.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(workdir / "hf_home"),  # where remote code would be copied to: checked empty afterwards
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    )
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", f"MARK = {MARK!r}\n" + textwrap.dedent(code)],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,  # the return code is asserted with the output
    )


def by_path(text: str) -> dict[str, str]:
    """What a stream holds after each path's mark, by path (what came before the first mark under "")."""
    parts = text.split(MARK)
    sections = {"": parts[0]}
    for part in parts[1:]:
        name, _, rest = part.partition("\n")
        sections[name] = rest
    return sections


@pytest.fixture(scope="module")
def loading_with_the_package(hub_folder, tmp_path_factory):
    """Every path, one after the other in one fresh process (one interpreter start instead of one per path): each
    path's stdout and stderr are told apart by the marks printed before it. A warning printed only once per process
    still shows, at the first path that causes it."""
    workdir = tmp_path_factory.mktemp("quiet")
    result = run_with_package(WITH_PACKAGE.format(folder=str(hub_folder), paths=PATHS), workdir)
    return result, by_path(result.stdout), by_path(result.stderr), workdir


@pytest.mark.parametrize("path", list(PATHS))
def test_loading_with_the_package_is_quiet(loading_with_the_package, path):
    result, stdout, stderr, workdir = loading_with_the_package
    output = result.stdout + result.stderr
    assert result.returncode == 0 and path in stdout, output
    assert PROMPT not in stdout[path] + stderr[path], f"{path} asked whether to run the folder's code:\n{output}"
    assert stderr[""] == "" and stderr[path] == "", f"{path} warned:\n{stderr[''] + stderr[path]}"
    loaded = json.loads(stdout[path].strip().splitlines()[-1])
    assert "error" not in loaded, loaded.get("error")
    installed = [module for module in loaded["modules"] if module.startswith("butd_frcnn.")]
    assert installed, loaded["modules"]
    assert not any(module.startswith("transformers_modules") for module in loaded["modules"]), loaded["modules"]
    assert loaded["folder_code"] == []
    copied = list((workdir / "hf_home").rglob("*.py"))
    assert copied == [], f"the folder's code was copied: {copied}"


WITHOUT_PACKAGE_UNTRUSTED = """
import json
import sys

from transformers import AutoModel

try:
    AutoModel.from_pretrained({folder!r})
except ValueError as error:
    refused = str(error)
else:
    refused = None
print()  # after the prompt's unanswered question
print(json.dumps({{
    "refused": refused,
    "folder_code": [name for name in sys.modules if name.startswith("transformers_modules")],
}}))
"""


def test_without_the_package_the_folder_code_runs_only_when_trusted(hub_folder, tmp_path):
    """Not asked for (and no one to answer the prompt), the folder's code is refused and never imported; with
    `trust_remote_code=True` it runs (test_modeling.py, test_pipelines.py and test_conversion_golden.py check its
    outputs)."""
    result = run_without_package(WITHOUT_PACKAGE_UNTRUSTED.format(folder=str(hub_folder)), tmp_path)
    assert result["refused"] is not None and "trust_remote_code=True" in result["refused"]
    assert result["folder_code"] == []
