"""Running `butd-frcnn`: in this process through the CLI's own entry point (`butd_frcnn.cli.main`), which is what
most tests need, or in a fresh process where a process is the point (signals, resource limits, torchrun, settings
read at import time such as HF_HOME, an interpreter without an optional package).

Both return a `subprocess.CompletedProcess` (`returncode`, `stdout`, `stderr`), so a test can switch between them.
"""

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
import warnings

import torch
from golden import REPO_ROOT

# what a CLI subprocess gets: this worktree's code, one CPU thread (the tests share the machine, and the thread count
# is part of what makes runs bit-identical), no network
CLI_THREADS = 1


def cli_env(extra: dict | None = None) -> dict:
    """The environment of a CLI subprocess, with `extra` on top (a None value removes the variable)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(CLI_THREADS), "HF_HUB_OFFLINE": "1"}
    return {name: value for name, value in {**env, **(extra or {})}.items() if value is not None}


def run_cli(
    *args, env: dict | None = None, check: bool = True, cwd=None, threads: int | None = CLI_THREADS
) -> subprocess.CompletedProcess:
    """`butd-frcnn ARGS` in this process, as a subprocess would see it: `butd_frcnn.cli.main` with stdout and stderr
    captured (the CLI's own logging set up by `main` included), an exit through `SystemExit` (argparse's errors) or
    an uncaught exception (its traceback on stderr, exit status 1) turned into the return code, `threads` torch
    threads (None: this process's count),
    `env` set in `os.environ` for the call (None unsets; variables that libraries read at import time, such as HF_HOME, need
    `run_cli_process`) and `cwd` as the working directory. With `check`, a non-zero exit fails the test."""
    from butd_frcnn.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environment({"HF_HUB_OFFLINE": "1", **(env or {})}))
        stack.enter_context(_working_directory(cwd))
        stack.enter_context(_torch_threads(threads or torch.get_num_threads()))
        stack.enter_context(contextlib.redirect_stdout(stdout))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        stack.enter_context(_fresh_root_logger())
        stack.enter_context(_warnings_to_stderr())
        try:
            returncode = main(argv)
        except SystemExit as exit:
            returncode = _exit_status(exit.code)
        except Exception:  # noqa: BLE001 (a process would print it and exit with 1)
            traceback.print_exc()
            returncode = 1
    completed = subprocess.CompletedProcess(["butd-frcnn", *argv], returncode, stdout.getvalue(), stderr.getvalue())
    if check and completed.returncode != 0:
        raise AssertionError(f"exit {completed.returncode}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}")
    return completed


def run_cli_process(*args, env: dict | None = None, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`butd-frcnn ARGS` in a fresh Python process importing this worktree (`kwargs` go to `subprocess.run`)."""
    completed = subprocess.run(
        [sys.executable, "-m", "butd_frcnn.cli", *map(str, args)],
        env=cli_env(env),
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )
    if check and completed.returncode != 0:
        raise AssertionError(f"exit {completed.returncode}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}")
    return completed


def start_cli_process(*args, env: dict | None = None) -> subprocess.Popen:
    """`butd-frcnn ARGS` started in a fresh process (to be signalled), its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "butd_frcnn.cli", *map(str, args)],
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_torchrun(*args, env: dict | None = None, processes: int = 2) -> subprocess.CompletedProcess:
    """`butd-frcnn ARGS` as `processes` CPU ranks of one `torchrun` (not checked: the caller reads the outcome)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "butd_frcnn.cli", *map(str, args)]  # fmt: skip
    return subprocess.run(command, env=cli_env(env), capture_output=True, text=True, check=False)


def _exit_status(code) -> int:
    """The status a process exits with after `sys.exit(code)` (a message is printed and gives 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _environment(values: dict):
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _working_directory(path):
    if path is None:
        yield
        return
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _fresh_root_logger():
    """A root logger without handlers, as in a new process, so that `main`'s `logging.basicConfig` installs its
    own (writing to the captured stderr); pytest's handlers and the level come back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _warnings_to_stderr():
    """Warnings printed to the captured stderr once per place, as a process prints them (pytest records them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        yield
