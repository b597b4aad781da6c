"""Push a converted folder to the Hugging Face Hub: create the repository if needed, upload the folder in one commit.

The Hub client is injectable (anything with `create_repo`, `create_branch` and `upload_folder` like
`huggingface_hub.HfApi`), so that tests never reach the network.
"""

import logging
from pathlib import Path
from typing import Protocol

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError

from .errors import ConversionError

logger = logging.getLogger(__name__)


class HubPushError(ConversionError):
    """No token, or the Hub refused or could not be reached; the converted folder is left as it is."""


class HubClient(Protocol):
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
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise HubPushError(
            f"pushing {folder} to {repo_id} failed: {error}. The converted folder is complete; push it again with "
            f"`hf upload {repo_id} {folder}`."
        ) from error
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s: %s", folder, repo_id, url)
    return url
