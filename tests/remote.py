"""Run Python code in a fresh process that cannot import the installed `butd_frcnn` package: what a Hub user who
loads the model as remote code has."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCK_PACKAGE = """
import importlib.abc
import sys


class _NoButdFrcnn(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "butd_frcnn" or name.startswith("butd_frcnn."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, _NoButdFrcnn())
try:
    import butd_frcnn
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("butd_frcnn is importable: the test would not be testing remote code")


def _assert_package_never_imported():
    imported = [name for name in sys.modules if name == "butd_frcnn" or name.startswith("butd_frcnn.")]
    assert not imported, imported
"""


def environment_without_package(cwd) -> dict[str, str]:
    """The environment of a process without the package: offline, with its own HF cache in `cwd`."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    environment["HF_HOME"] = str(Path(cwd) / "hf_home")  # remote code is copied here, not into the user's cache
    environment["TRANSFORMERS_VERBOSITY"] = "error"
    return environment


def start_without_package(code: str, cwd) -> subprocess.Popen:
    """Start `code` with `butd_frcnn` unimportable (offline, in `cwd`): a server. Its stdout is a text pipe, its
    stderr goes to `cwd/stderr.txt` (a pipe nobody reads could fill up and block it)."""
    with open(Path(cwd) / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)],
            cwd=cwd,
            env=environment_without_package(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def run_without_package(code: str, cwd, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `code` with `butd_frcnn` unimportable (offline, in `cwd`); raise with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)],
        cwd=cwd,
        env=environment_without_package(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,  # the caller reads the return code and stderr
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
