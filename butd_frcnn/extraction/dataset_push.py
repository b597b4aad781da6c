"""Push a finished Parquet feature output to the Hugging Face Hub as a dataset, with its dataset card.

The upload is staged in a hidden folder beside the output (hard links to the shards, plus the card as README.md),
so the output itself stays a plain folder of Parquet files (which pandas and pyarrow read as one table). The Hub
client is injectable (anything with `create_repo` and `upload_folder` like `huggingface_hub.HfApi`), so that tests
never reach the network. A failed push leaves the local output complete and says how to push it later.
"""

import logging
import shlex
import shutil
import sys
from pathlib import Path

import huggingface_hub

from ..conversion.push import HubClient, HubPushError, check_token, resolve_token
from ..hub_errors import failure_line
from .dataset_card import render_dataset_card
from .durable import link_into_new_folder
from .formats import FORMATS
from .model_loading import model_revision
from .parquet import shard_files
from .records import ExtractionError
from .sidecars import RunManifest

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"


def push_token(token: str | None = None, api: HubClient | None = None) -> tuple[str, str | None]:
    """The token to push with and a warning or None (see `check_token`), as an `ExtractionError` when there is none
    or the Hub refuses it: checked before a run, so that a bad login does not wait for the end of the extraction."""
    try:
        return check_token(token, api)
    except HubPushError as error:
        raise ExtractionError(str(error)) from error


def push_features(
    output: Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    command_line: str | None = None,
    api: HubClient | None = None,
) -> str:
    """Upload the shards of the Parquet output `output` and its dataset card to the dataset repository `repo_id`
    (created if needed) in one commit; returns the commit's URL.

    Raises:
        ExtractionError: not a Parquet output of ours, no token, or the Hub refused or could not be reached (the
            local output is complete then, and the message says how to push it again).
    """
    output = Path(output)
    manifest = RunManifest.load(output)
    format = FORMATS.get(manifest.format) if manifest is not None else None
    if format is None or not format.hub_dataset:
        raise ExtractionError(f"{output}: only a Parquet output of `butd-frcnn extract` (--format parquet) is pushed")
    try:
        token = resolve_token(token)
    except HubPushError as error:
        raise ExtractionError(str(error)) from None
    command_line = command_line or shlex.join(["butd-frcnn", *sys.argv[1:]])
    card = render_dataset_card(output, repo_id, command_line, model_revision(manifest.model))
    staging = output.with_name(f".{output.name}.hub-upload")
    shutil.rmtree(staging, ignore_errors=True)  # left by a push that was killed
    link_into_new_folder([(shard, shard.name) for shard in shard_files(output)], staging)
    api = api if api is not None else huggingface_hub.HfApi(token=token)
    try:
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        api.create_repo(repo_id, token=token, private=private, repo_type="dataset", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staging),
            repo_type="dataset",
            token=token,
            commit_message="Upload bottom-up-attention region features (butd-frcnn)",
        )
    except Exception as error:
        retry = "rerun this command with --resume (nothing is extracted again), or call push_features"
        action, safe = f"pushing {output} to the dataset {repo_id}", f"The features in {output} are complete."
        message = failure_line(error, action, safe, retry)
        if message is None:
            raise
        raise ExtractionError(message) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to the dataset %s: %s", output, repo_id, url)
    return url
