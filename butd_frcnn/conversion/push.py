"""Push a converted folder to the Hugging Face Hub: create the repository if needed, upload the folder in one commit.

The Hub client is injectable (anything with `whoami`, `create_repo`, `create_branch` and `upload_folder` like
`huggingface_hub.HfApi`), so that tests never reach the network. Every failure to talk to the Hub becomes one line
(see `hub_errors.py`) that says what is safe on disk and what to do.
"""

import logging
from pathlib import Path
from typing import Protocol

import huggingface_hub

from ..hub_errors import failure_line, hub_failure
from .errors import ConversionError

logger = logging.getLogger(__name__)


class HubPushError(ConversionError):
    """No token, or the Hub refused or could not be reached; the converted folder is left as it is."""


class HubClient(Protocol):
    def whoami(self, token: str | None = None, **kwargs) -> dict: ...

    def create_repo(self, repo_id: str, **kwargs): ...

    def create_branch(self, repo_id: str, **kwargs): ...

    def upload_folder(self, **kwargs): ...


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the one given, else the usual places (`HF_TOKEN`, the `hf auth login` file)."""
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubPushError(
            "no Hugging Face token found: log in with `hf auth login`, set the HF_TOKEN environment variable, "
            "or pass --token"
        )
    return token


def check_token(token: str | None = None, api: HubClient | None = None) -> tuple[str, str | None]:
    """The token to push with, shown to the Hub before any work (`whoami`), and a warning or None.

    Returns the token and None when the Hub accepts it; the token and a warning (what failed) when the Hub cannot be
    asked now (no network, offline mode, a timeout, a rate limit, a server error): the work can go on, and only the
    push at its end needs the Hub.

    Raises:
        HubPushError: no token, or the Hub refuses it (wrong, expired, read-only): no push could succeed.
    """
    token = resolve_token(token)
    api = api if api is not None else huggingface_hub.HfApi(token=token)
    try:
        info = api.whoami(token=token)
    except Exception as error:
        failure = hub_failure(error)
        if failure is None:
            raise
        if failure.unreachable:
            return token, f"the Hub token could not be checked: {failure.reason()}"
        raise HubPushError(failure.line("checking the Hub token", "Nothing was written.")) from error
    access = (info.get("auth") or {}).get("accessToken") or {} if isinstance(info, dict) else {}
    if access.get("role") == "read":
        raise HubPushError(
            f"the Hub token of {info.get('name', 'this account')} is read-only: pushing needs a token with write "
            "access (huggingface.co/settings/tokens); pass it with --token or `hf auth login`. Nothing was written."
        )
    return token, None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str = "Upload converted bottom-up-attention Faster R-CNN",
    api: HubClient | None = None,
) -> str:
    """Upload `folder` to the model repository `repo_id`; returns the URL of the commit (or of the pull request)."""
    token = resolve_token(token)
    api = api if api is not None else huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            token=token,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
        )
    except Exception as error:
        retry = f"push it with `hf upload {repo_id} {folder}`"
        message = failure_line(error, f"pushing {folder} to {repo_id}", "The converted folder is complete.", retry)
        if message is None:
            raise
        raise HubPushError(message) from error
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s: %s", folder, repo_id, url)
    return url
