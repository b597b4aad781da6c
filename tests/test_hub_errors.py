"""When the Hub cannot be reached or refuses: one line from every command and entry point that talks to it, never a
traceback, exit code 1, and what was written stays.

Nothing here reaches the network: a stand-in client (in place of `huggingface_hub.HfApi`, or of the loaders that
call the Hub) raises the real exception types of both `huggingface_hub` generations: 2.x's (`httpx2` errors, its
`errors` classes over `httpx2` responses) and 0.x's, which are `requests` errors (its `HfHubHTTPError` is a
`requests.HTTPError`; the 0.x classes are rebuilt here over `requests` with the names and bases its `errors` module
gives them).
"""

import http.server
import json
import logging
import threading
from types import SimpleNamespace

import httpx2
import huggingface_hub
import numpy as np
import pytest
import requests
from extraction_helpers import TEST_MAX_PIXELS, make_image_folder, run_cli, run_cli_process, save_test_model
from golden import GOLDEN
from huggingface_hub import errors as hub_errors_2x

from butd_frcnn.cli import main
from butd_frcnn.conversion.convert import EXPECTED_FILES, convert_caffemodel
from butd_frcnn.conversion.push import HubPushError, check_token, push_folder
from butd_frcnn.extraction import ExtractionError, read_features
from butd_frcnn.extraction.dataset_input import load_dataset_source
from butd_frcnn.extraction.dataset_push import push_features
from butd_frcnn.hub_errors import hub_failure

# ---------------------------------------------------------------------------------------------------------------
# The exceptions of both generations
# ---------------------------------------------------------------------------------------------------------------

URL = "https://huggingface.co/api/repos/create"


def response_2x(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("POST", URL))


def response_0x(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code, response.url = status, URL
    response.request = requests.Request("POST", URL).prepare()
    return response


def _class_0x(name: str, base: type) -> type:
    return type(name, (base,), {"__module__": "huggingface_hub.errors"})


# huggingface_hub 0.x's errors module: HfHubHTTPError(requests.HTTPError), RepositoryNotFoundError(HfHubHTTPError),
# GatedRepoError(RepositoryNotFoundError), OfflineModeIsEnabled(ConnectionError: the builtin one)
HfHubHTTPError0x = _class_0x("HfHubHTTPError", requests.HTTPError)
RepositoryNotFoundError0x = _class_0x("RepositoryNotFoundError", HfHubHTTPError0x)
GatedRepoError0x = _class_0x("GatedRepoError", RepositoryNotFoundError0x)
OfflineModeIsEnabled0x = _class_0x("OfflineModeIsEnabled", ConnectionError)


def http_2x(cls, status: int, message: str):
    return cls(message, response=response_2x(status))


def http_0x(cls, status: int, message: str):
    return cls(message, response=response_0x(status))


# (kind, generation, factory): what each failure looks like as the client raises it
FAILURES = [
    ("connection", "2.x", lambda: httpx2.ConnectError("[Errno -2] Name or service not known")),
    ("connection", "2.x", lambda: httpx2.ProxyError("407 Proxy Authentication Required")),
    ("timeout", "2.x", lambda: httpx2.ReadTimeout("The read operation timed out")),
    ("timeout", "2.x", lambda: httpx2.ConnectTimeout("timed out")),
    ("offline", "2.x", lambda: hub_errors_2x.OfflineModeIsEnabled("Cannot reach ...: offline mode is enabled.")),
    ("token", "2.x", lambda: http_2x(hub_errors_2x.HfHubHTTPError, 401, "Invalid user token.")),
    ("forbidden", "2.x", lambda: http_2x(hub_errors_2x.HfHubHTTPError, 403, "You don't have the rights")),
    ("not_found", "2.x", lambda: http_2x(hub_errors_2x.RepositoryNotFoundError, 404, "Repository Not Found")),
    ("gated", "2.x", lambda: http_2x(hub_errors_2x.GatedRepoError, 403, "Access to model org/m is restricted")),
    ("rate_limit", "2.x", lambda: http_2x(hub_errors_2x.HfHubHTTPError, 429, "You've hit the rate limit")),
    ("server", "2.x", lambda: http_2x(hub_errors_2x.HfHubHTTPError, 503, "Service Unavailable")),
    ("connection", "0.x", lambda: requests.exceptions.ConnectionError("Max retries exceeded (NameResolutionError)")),
    ("connection", "0.x", lambda: requests.exceptions.SSLError("certificate verify failed")),
    ("timeout", "0.x", lambda: requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)")),
    ("timeout", "0.x", lambda: requests.exceptions.ConnectTimeout("Connection to huggingface.co timed out")),
    ("offline", "0.x", lambda: OfflineModeIsEnabled0x("Cannot reach ...: offline mode is enabled.")),
    ("token", "0.x", lambda: http_0x(requests.HTTPError, 401, "Invalid user token.")),  # 0.x's whoami raises this
    ("forbidden", "0.x", lambda: http_0x(HfHubHTTPError0x, 403, "Forbidden: you cannot write to org")),
    ("not_found", "0.x", lambda: http_0x(RepositoryNotFoundError0x, 401, "Repository Not Found for url")),
    ("gated", "0.x", lambda: http_0x(GatedRepoError0x, 403, "Cannot access gated repo")),
    ("rate_limit", "0.x", lambda: http_0x(HfHubHTTPError0x, 429, "Too Many Requests")),
    ("server", "0.x", lambda: http_0x(HfHubHTTPError0x, 500, "Internal Server Error")),
]
FAILURE_IDS = [f"{kind}-{generation}-{index}" for index, (kind, generation, _) in enumerate(FAILURES)]
UNREACHABLE = {"connection", "timeout", "offline", "rate_limit", "server"}


def wrapped(error: BaseException) -> OSError:
    """As transformers and datasets hand the client's error on: an OSError raised while handling it."""
    try:
        raise error
    except Exception:  # noqa: BLE001 (any of the clients' errors)
        try:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")
        except OSError as outer:
            return outer


@pytest.mark.parametrize(("kind", "generation", "factory"), FAILURES, ids=FAILURE_IDS)
def test_each_failure_of_each_generation_is_recognised_also_when_wrapped(kind, generation, factory):
    error = factory()
    assert hub_failure(error).kind == kind
    assert hub_failure(wrapped(error)).kind == kind, "the cause behind transformers' OSError"
    line = hub_failure(error).line("pushing out to org/m", "The folder is complete.", "then retry")
    assert "\n" not in line and line.startswith("pushing out to org/m failed: ")
    assert "The folder is complete." in line and line.endswith("then retry.")


def test_other_errors_are_not_taken_for_hub_failures():
    for error in (ValueError("bad box"), KeyError("x"), OSError("disk full"), BrokenPipeError(), RuntimeError()):
        assert hub_failure(error) is None, error


def test_messages_of_several_lines_become_one():
    error = http_2x(hub_errors_2x.HfHubHTTPError, 500, "Server error\n\nRequest ID: abc\n" + "x" * 1000)
    reason = hub_failure(error).reason()
    assert "\n" not in reason and "Request ID: abc" in reason and len(reason) < 400


# ---------------------------------------------------------------------------------------------------------------
# A stand-in client
# ---------------------------------------------------------------------------------------------------------------


class StandInHub:
    """Answers like `HfApi`; raises `error` from the calls named in `failing` (whoami, create_repo, upload_folder;
    one name or several)."""

    def __init__(self, failing=(), error: BaseException | None = None, role: str = "write"):
        self.failing = {failing} if isinstance(failing, str) else set(failing)
        self.error, self.role, self.calls = error, role, []

    def _call(self, name: str):
        self.calls.append(name)
        if name in self.failing:
            raise self.error

    def whoami(self, token=None, **kwargs):
        self._call("whoami")
        return {"name": "someone", "auth": {"accessToken": {"role": self.role}}}

    def create_repo(self, repo_id, **kwargs):
        self._call("create_repo")

    def create_branch(self, repo_id, **kwargs):
        self._call("create_branch")

    def upload_folder(self, **kwargs):
        self._call("upload_folder")
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc", pr_url=None)


@pytest.fixture
def stand_in(monkeypatch):
    """Install a stand-in as `huggingface_hub.HfApi` (what the commands build): `stand_in(failing, error)`."""

    def install(failing=(), error=None, role="write") -> StandInHub:
        hub = StandInHub(failing, error, role)
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda *args, **kwargs: hub)
        return hub

    return install


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("converted") / "model"
    convert_caffemodel(GOLDEN / "tiny_seed0.caffemodel", folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The token check up front
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "generation", "factory"), FAILURES, ids=FAILURE_IDS)
def test_token_check_stops_on_a_refusal_and_warns_when_the_hub_is_out_of_reach(kind, generation, factory):
    hub = StandInHub("whoami", factory())
    if kind in UNREACHABLE:
        token, warning = check_token("hf_t", hub)
        assert token == "hf_t" and warning.startswith("the Hub token could not be checked: ")
    else:
        with pytest.raises(HubPushError, match=r"^checking the Hub token failed: .* Nothing was written\.") as caught:
            check_token("hf_t", hub)
        assert "\n" not in str(caught.value)


def test_a_read_only_token_is_refused_up_front():
    with pytest.raises(HubPushError, match="read-only: pushing needs a token with write access"):
        check_token("hf_t", StandInHub(role="read"))
    assert check_token("hf_t", StandInHub()) == ("hf_t", None)


# ---------------------------------------------------------------------------------------------------------------
# convert --push-to-hub
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "generation", "factory"), FAILURES, ids=FAILURE_IDS)
@pytest.mark.parametrize("failing", ["create_repo", "upload_folder"])
def test_a_failed_push_of_a_converted_folder_is_one_line_and_keeps_the_folder(
    kind, generation, factory, failing, converted
):
    files = sorted(path.name for path in converted.iterdir())
    with pytest.raises(HubPushError) as caught:
        push_folder(converted, "org/m", token="hf_t", api=StandInHub(failing, factory()))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"pushing {converted} to org/m failed: ")
    assert "The converted folder is complete." in message and f"`hf upload org/m {converted}`" in message
    assert sorted(path.name for path in converted.iterdir()) == files


def run_main(args: list, capsys, caplog) -> tuple[int, str]:
    """`butd-frcnn ARGS` in this process: the exit code and everything it printed or logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err + caplog.text


@pytest.mark.parametrize(
    "error",
    [httpx2.ConnectError("[Errno -2] Name or service not known"), requests.exceptions.ConnectionError("refused")],
    ids=["2.x", "0.x"],
)
def test_cli_convert_without_network_converts_warns_then_says_the_push_failed(
    error, stand_in, tmp_path, capsys, caplog
):
    stand_in({"whoami", "create_repo", "upload_folder"}, error)  # no network: every call fails
    output = tmp_path / "out"
    args = ["convert", GOLDEN / "tiny_seed0.caffemodel", output, "--push-to-hub", "org/m", "--token", "hf_t"]
    code, text = run_main(args, capsys, caplog)
    assert code == 1 and "Traceback" not in text
    assert "the Hub token could not be checked: the Hub could not be reached" in text and "Converting anyway" in text
    assert f"error: pushing {output} to org/m failed: the Hub could not be reached" in text
    assert sorted(path.name for path in output.iterdir()) == sorted(EXPECTED_FILES)


def test_cli_convert_with_a_refused_token_stops_before_converting(stand_in, tmp_path, capsys, caplog):
    stand_in("whoami", http_2x(hub_errors_2x.HfHubHTTPError, 401, "Invalid user token."))
    output = tmp_path / "out"
    args = ["convert", GOLDEN / "tiny_seed0.caffemodel", output, "--push-to-hub", "org/m", "--token", "hf_t"]
    code, text = run_main(args, capsys, caplog)
    assert code == 1 and "Traceback" not in text
    assert "checking the Hub token failed: the Hub refused the token" in text and "hf auth login" in text
    assert not output.exists()


class RefusingHub(http.server.BaseHTTPRequestHandler):
    """A local stand-in of the Hub's HTTP API that refuses every token, as huggingface.co answers an expired one."""

    def _refuse(self):
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _refuse

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def refusing_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_real_client_in_a_process_one_line_and_the_traceback_only_with_debug(refusing_hub, tmp_path):
    """The installed huggingface_hub itself, in a fresh `butd-frcnn` process, against a Hub that refuses the token:
    the run stops before converting with one line; `--debug` adds the traceback."""
    output = tmp_path / "out"
    args = ["convert", GOLDEN / "tiny_seed0.caffemodel", output, "--push-to-hub", "org/m", "--token", "hf_expired"]
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": refusing_hub, "HF_HOME": str(tmp_path / "hf-home")}
    plain = run_cli_process(*args, env=env, check=False)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
    errors = [line for line in plain.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "checking the Hub token failed: the Hub refused the token" in errors[0]
    assert not output.exists()
    debug = run_cli_process("--debug", *args, env=env, check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "HfHubHTTPError" in debug.stderr


# ---------------------------------------------------------------------------------------------------------------
# extract --push-to-hub, push_features
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, shared_dir):
    return save_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> list:
    good, _ = make_image_folder(tmp_path_factory.mktemp("images"))
    return [str(path) for path in list(good.values())[:2]]


def extract_args(model_folder, output, *extra) -> list:
    return ["extract", "--model", model_folder, "--output", output, "--max-pixels", TEST_MAX_PIXELS, "--no-progress",
            "--num-workers", "0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def parquet_output(model_folder, two_images, tmp_path_factory):
    output = tmp_path_factory.mktemp("features") / "features"
    assert main([str(a) for a in extract_args(model_folder, output, "--format", "parquet", *two_images)]) == 0
    return output


@pytest.mark.parametrize(("kind", "generation", "factory"), FAILURES, ids=FAILURE_IDS)
def test_a_failed_push_of_features_is_one_line_and_keeps_them(kind, generation, factory, parquet_output):
    before = {path.name: path.read_bytes() for path in parquet_output.iterdir()}
    with pytest.raises(ExtractionError) as caught:
        push_features(parquet_output, "org/f", token="hf_t", api=StandInHub("upload_folder", factory()))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"pushing {parquet_output} to the dataset org/f failed: ")
    assert f"The features in {parquet_output} are complete." in message and "--resume" in message
    assert {path.name: path.read_bytes() for path in parquet_output.iterdir()} == before
    assert not list(parquet_output.parent.glob(".*hub-upload*")), "the staging folder is gone"


@pytest.mark.parametrize(
    "error",
    [httpx2.ConnectTimeout("timed out"), requests.exceptions.ConnectTimeout("Connection to huggingface.co timed out")],
    ids=["2.x", "0.x"],
)
def test_cli_extract_out_of_reach_warns_first_writes_everything_and_resume_pushes(
    error, stand_in, model_folder, two_images, tmp_path, capsys, caplog
):
    hub = stand_in({"whoami", "create_repo", "upload_folder"}, error)
    output = tmp_path / "features"
    args = extract_args(model_folder, output, "--format", "parquet", "--push-to-hub", "org/f", "--token", "t")
    checked_when = []
    whoami = hub.whoami
    hub.whoami = lambda *a, **k: checked_when.append(output.exists()) or whoami(*a, **k)
    code, text = run_main([*args, *two_images], capsys, caplog)
    assert code == 1 and "Traceback" not in text
    assert checked_when == [False], "the token is checked before any work"
    assert "the Hub token could not be checked: the Hub did not answer in time" in text and "Extracting anyway" in text
    assert f"pushing {output} to the dataset org/f failed: the Hub did not answer in time" in text
    assert f"The features in {output} are complete" in text and "--resume" in text
    assert len(list(read_features(output))) == 2

    hub.failing = set()  # the Hub is back
    code, text = run_main([*args, "--resume", *two_images], capsys, caplog)
    assert code == 0 and "pushed to https://huggingface.co/datasets/org/f" in text
    assert len(list(read_features(output))) == 2


def test_cli_extract_with_an_expired_token_stops_before_any_work(
    stand_in, model_folder, two_images, tmp_path, capsys, caplog
):
    stand_in("whoami", http_0x(requests.HTTPError, 401, "Invalid user token."))
    output = tmp_path / "features"
    args = extract_args(model_folder, output, "--format", "parquet", "--push-to-hub", "org/f", "--token", "t")
    code, text = run_main([*args, *two_images], capsys, caplog)
    assert code == 1 and "Traceback" not in text
    assert "checking the Hub token failed: the Hub refused the token (wrong, revoked or expired)" in text
    assert not output.exists()


def test_help_says_what_is_checked_up_front(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Checked before any work" in text and "Only at the end" in text and "--resume" in text


# ---------------------------------------------------------------------------------------------------------------
# --model and --dataset from the Hub; a streamed dataset failing mid-run
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "generation", "factory"), FAILURES, ids=FAILURE_IDS)
def test_a_hub_model_that_cannot_be_fetched_is_one_line(kind, generation, factory, monkeypatch, tmp_path):
    from butd_frcnn.extraction import model_loading

    error = wrapped(factory())

    def from_pretrained(*args, **kwargs):
        raise error

    monkeypatch.setattr(model_loading.AutoModel, "from_pretrained", from_pretrained)
    with pytest.raises(ExtractionError) as caught:
        model_loading.load_model("org/butd-frcnn", model_loading.resolve_device("cpu"), "fp32")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--model org/butd-frcnn: not a local folder, and ")
    assert "Nothing was written" in message and "hf download org/butd-frcnn" in message
    if kind != "offline":
        assert f"downloading it failed: {hub_failure(error).reason()}" in message


@pytest.mark.parametrize(("kind", "generation", "factory"), FAILURES, ids=FAILURE_IDS)
def test_a_hub_dataset_that_cannot_be_loaded_is_one_line(kind, generation, factory, monkeypatch):
    import datasets

    def load_dataset(*args, **kwargs):
        raise factory()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(ExtractionError) as caught:
        load_dataset_source("org/pictures")
    message = str(caught.value)
    assert "\n" not in message and "--dataset org/pictures: not a local folder or file" in message
    assert "Nothing was written" in message
    assert ("could not be reached" in message or "HF_HUB_OFFLINE" in message) == (kind in UNREACHABLE)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx2.ReadError("connection reset by peer"), "the Hub could not be reached"),
        (requests.exceptions.ReadTimeout("Read timed out."), "the Hub did not answer in time"),
    ],
    ids=["2.x", "0.x"],
)
def test_the_hub_failing_in_the_middle_of_a_run_keeps_the_images_written(
    error, reason, model_folder, two_images, monkeypatch, tmp_path, capsys, caplog
):
    """A streamed dataset losing the network after its first image: the image written stays, --resume finishes."""
    from butd_frcnn.extraction import inputs

    images = inputs.FileSource.images

    def first_then_fail(self, indices):
        for number, entry in enumerate(images(self, indices)):
            if number == 1:
                raise error
            yield entry

    monkeypatch.setattr(inputs.FileSource, "images", first_then_fail)
    output = tmp_path / "features"
    args = extract_args(model_folder, output, "--format", "npz", "--batch-size", "1", *two_images)
    code, text = run_main(args, capsys, caplog)
    assert code == 1 and "Traceback" not in text
    assert f"extract failed: {reason}" in text
    assert f"The images written to {output} before it are complete" in text and "--resume" in text
    written = list(read_features(output))
    assert len(written) == 1 and np.isfinite(written[0].features).all()

    monkeypatch.setattr(inputs.FileSource, "images", images)
    code, text = run_main([*args, "--resume"], capsys, caplog)
    assert code == 0 and len(list(read_features(output))) == 2
