"""A minimal HTTP server with the request contract of Hugging Face's Inference Endpoints server
(huggingface-inference-toolkit 0.5.6, `webservice_starlette.predict`), written for the tests from its documented
behaviour:

- it imports the model folder's `handler.py` (the folder on `sys.path`) and builds `EndpointHandler(folder)` once;
- `POST /` with `Content-Type: application/json` hands the handler the parsed JSON; with `image/png`, `image/jpeg`,
  ... it decodes the body with Pillow, converts it to RGB and hands over `{"inputs": <PIL image>}`; any other content
  type is an error;
- a body without `inputs` is an error; query-string parameters become `parameters` when the body has none, as
  strings, except all-digit ones (integers) and "true"/"false" (booleans);
- the handler's result goes back as JSON; any exception becomes HTTP 400 with `{"error": message}`;
- one request at a time; `GET /health` answers "Ok".

`python endpoint_server.py FOLDER` serves on 127.0.0.1 at a free port and prints `PORT <n>` once it is ready.
"""

import importlib.util
import io
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

from PIL import Image

IMAGE_TYPES = frozenset(
    ("image/png", "image/jpeg", "image/jpg", "image/tiff", "image/bmp", "image/gif", "image/webp", "image/x-image")
)
JSON_TYPES = frozenset(("application/json", "application/json; charset=UTF-8"))


def load_endpoint(folder: str):
    """The folder's `EndpointHandler(folder)`, its module imported from the file as the server imports it."""
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("handler", f"{folder}/handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["handler"] = module
    spec.loader.exec_module(module)
    return module.EndpointHandler(folder)


def request_data(content_type: str | None, body: bytes, query: str) -> dict:
    """What the handler is called with for this request."""
    if content_type in JSON_TYPES:
        data = json.loads(body)
    elif content_type in IMAGE_TYPES:
        data = {"inputs": Image.open(io.BytesIO(body)).convert("RGB")}
    else:
        raise ValueError(f"Content type {content_type!r} not supported")
    if not isinstance(data, dict) or "inputs" not in data:
        raise ValueError(f"Body needs to provide a inputs key, received: {body[:100]!r}")
    parameters = dict(urllib.parse.parse_qsl(query))
    if parameters and "parameters" not in data:
        data["parameters"] = {key: typed_query_value(value) for key, value in parameters.items()}
    return data


def typed_query_value(value: str):
    if value.isnumeric():
        return int(value)
    return {"true": True, "false": False}.get(value, value)


def serve(folder: str) -> None:
    endpoint = load_endpoint(folder)

    class Requests(BaseHTTPRequestHandler):
        def do_GET(self):
            self.answer(200, b"Ok", "text/plain")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            url = urllib.parse.urlsplit(self.path)
            try:
                result = endpoint(request_data(self.headers.get("Content-Type"), body, url.query))
                self.answer(200, json.dumps(result).encode(), "application/json")
            except Exception as error:  # noqa: BLE001 (the server's contract: every failure is a 400 with its message)
                self.answer(400, json.dumps({"error": str(error)}).encode(), "application/json")

        def answer(self, status: int, payload: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Requests)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1])
