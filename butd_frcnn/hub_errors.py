"""What went wrong talking to the Hugging Face Hub, as one line a user can act on.

`huggingface_hub` 0.x raises `requests` errors (its `HfHubHTTPError` is a `requests.HTTPError`); later generations
raise `httpx` or `httpx2` errors, which for a failed connection are neither `HfHubHTTPError` nor `OSError`. A failure
is recognised here by the names along each exception's class hierarchy (and along its chain of causes: transformers
and datasets wrap the client's errors), so that neither HTTP library has to be installed, nor imported, here.
"""

import logging
import sys
from dataclasses import dataclass

# the HTTP stacks of the huggingface_hub generations and of datasets' streaming (fsspec over aiohttp)
NETWORK_MODULES = frozenset({"requests", "urllib3", "httpx", "httpcore", "httpx2", "httpcore2", "aiohttp"})
TIMEOUT_NAMES = frozenset(
    {
        "Timeout",
        "TimeoutException",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "ServerTimeoutError",
    }
)
CONNECTION_NAMES = frozenset(
    {
        "ConnectionError",  # requests
        "ConnectError",  # httpx, httpx2
        "NetworkError",
        "TransportError",
        "ProxyError",
        "SSLError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "NewConnectionError",  # urllib3
        "MaxRetryError",
        "ProtocolError",
        "ClientConnectionError",  # aiohttp
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
    }
)

# kind -> (what happened, what to do about it)
EXPLANATIONS = {
    "offline": (
        "the Hub is switched off here (HF_HUB_OFFLINE=1)",
        "unset HF_HUB_OFFLINE where there is network",
    ),
    "connection": (
        "the Hub could not be reached",
        "check the network, and the proxy (HTTPS_PROXY) on a cluster node or behind a firewall",
    ),
    "timeout": (
        "the Hub did not answer in time",
        "retry when the network is better (HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT give it longer)",
    ),
    "token": (
        "the Hub refused the token (wrong, revoked or expired)",
        "log in again with `hf auth login`, or pass another --token",
    ),
    "forbidden": (
        "the token may not do this (a read-only token, or no write access to the organisation)",
        "use a token with write access (huggingface.co/settings/tokens)",
    ),
    "not_found": (
        "the repository does not exist, or it is private and the token cannot see it",
        "check the name, and that the token's account can see it",
    ),
    "gated": (
        "the repository is gated",
        "accept its conditions on its page, logged in as the token's account",
    ),
    "rate_limit": (
        "the Hub's rate limit was hit (HTTP 429)",
        "wait a few minutes, then retry",
    ),
    "server": (
        "the Hub had an error",
        "retry later (status.huggingface.co)",
    ),
    "http": (
        "the Hub refused the request",
        "check the repository name and the token",
    ),
}


@dataclass(frozen=True)
class HubFailure:
    """A failure to talk to the Hub: its `kind` (a key of `EXPLANATIONS`) and the exception that showed it."""

    kind: str
    error: BaseException

    @property
    def status(self) -> int | None:
        return http_status(self.error)

    def reason(self) -> str:
        """What happened, with the client's own words shortened to one line."""
        what = EXPLANATIONS[self.kind][0]
        status = f"HTTP {self.status}: " if self.status and self.kind in ("server", "http") else ""
        return f"{what} ({status}{type(self.error).__name__}: {one_line(str(self.error))})"

    @property
    def remedy(self) -> str:
        return EXPLANATIONS[self.kind][1]

    @property
    def unreachable(self) -> bool:
        """The Hub could not be asked at all (not an answer about the token or the repository)."""
        return self.kind in ("offline", "connection", "timeout", "rate_limit", "server")

    def line(self, action: str, safe: str = "", then: str = "") -> str:
        """One line: `action` failed, why, what is `safe` on disk, what to do (`then`: how to retry)."""
        parts = [
            f"{action} failed: {self.reason()}.",
            safe,
            f"{capitalised(self.remedy)}{'; ' + then if then else ''}.",
        ]
        return " ".join(part for part in parts if part)


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line (the clients' messages span several), cut at `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def http_status(error: BaseException) -> int | None:
    """The HTTP status of the response an error carries (`requests`, `httpx` and `httpx2` responses alike)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _names(error: BaseException) -> set[tuple[str, str]]:
    """(top-level module, class name) of every class in the error's hierarchy."""
    return {(cls.__module__.split(".")[0], cls.__name__) for cls in type(error).__mro__}


def _kind(error: BaseException) -> str | None:
    names = _names(error)
    plain = {name for _, name in names}
    status = http_status(error)
    if "OfflineModeIsEnabled" in plain:
        return "offline"
    if "GatedRepoError" in plain:
        return "gated"
    if "RepositoryNotFoundError" in plain or "RevisionNotFoundError" in plain:
        return "not_found"
    if status is not None:
        if status == 401:
            return "token"
        if status == 403:
            return "forbidden"
        if status == 404:
            return "not_found"
        if status == 429:
            return "rate_limit"
        return "server" if status >= 500 else "http" if status >= 400 else None
    if any(module in NETWORK_MODULES and name in TIMEOUT_NAMES for module, name in names):
        return "timeout"
    if any(module in NETWORK_MODULES and name in CONNECTION_NAMES for module, name in names):
        return "connection"
    if isinstance(error, TimeoutError):
        return "timeout"
    if (
        isinstance(error, ConnectionError)
        and not isinstance(error, BrokenPipeError)
        or ("socket", "gaierror") in names
    ):
        return "connection"
    return None


def _chain(error: BaseException):
    """The error and its causes (`raise ... from`, or raised while handling another), each once."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def hub_failure(error: BaseException) -> HubFailure | None:
    """The Hub failure `error` is (or was caused by): no connection, a timeout, a refused token, a missing or gated
    repository, a rate limit, a server error; None for anything else."""
    for link in _chain(error):
        kind = _kind(link)
        if kind is not None:
            return HubFailure(kind, link)
    return None


def failure_line(error: BaseException, action: str, safe: str, retry: str) -> str | None:
    """One line for a failed `action`: why, what is `safe` on disk, what to do and how to `retry`; None when `error`
    is neither a Hub failure nor an `OSError` / `ValueError` (a bug, to be raised as it is)."""
    failure = hub_failure(error)
    if failure is not None:
        return failure.line(action, safe, f"then {retry}")
    if isinstance(error, (OSError, ValueError)):  # HfHubHTTPError is an OSError in every generation
        return f"{action} failed: {one_line(str(error))}. {safe} {capitalised(retry)}."
    return None


def show_traceback(logger: logging.Logger) -> None:
    """Log the traceback of the exception being handled when debugging details are asked for (`--debug`, `-v` or
    the logging level); users get the one line only."""
    handled = sys.exc_info()
    if logger.isEnabledFor(logging.DEBUG) and handled[0] is not None:
        logger.debug("the traceback of the error above:", exc_info=handled)
