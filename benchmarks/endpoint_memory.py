"""Peak memory and time of one Inference Endpoints request, per image size: each request runs in a fresh process that
loads the converted folder's `handler.py` as the server does, then serves one JPEG of the given size, sent as base64
JSON (the handler decodes it) or as a raw `image/jpeg` body (the server decodes it to RGB first, counted here too).

    python benchmarks/endpoint_memory.py FOLDER [--sizes 4000x3000 6000x5000 8000x5000] [--bodies json raw]

Peak memory is the process's peak resident set (`ru_maxrss`), after loading and after the request; a request whose
image is above the processor's `max_pixels` reports the 400 message instead.
"""

import argparse
import json
import subprocess
import sys
import textwrap

REQUEST = textwrap.dedent(
    """
    import base64, io, json, resource, sys, time
    import numpy as np
    from PIL import Image

    folder, width, height, body = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sys.path.insert(0, folder)
    import handler

    def peak_gib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    endpoint = handler.EndpointHandler(folder)
    # a smooth random image (JPEG-compressible like a photo), encoded before the measurement starts
    coarse = (np.random.default_rng(0).random((height // 50 + 1, width // 50 + 1, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    payload = base64.b64encode(data).decode() if body == "json" else data
    del coarse, buffer
    loaded = peak_gib()
    start = time.perf_counter()
    try:
        if body == "json":
            request = json.loads(json.dumps({"inputs": payload}))  # what the server's JSON parsing hands over
        else:
            request = {"inputs": Image.open(io.BytesIO(payload)).convert("RGB")}  # the server's raw-body decoding
        result = f"{len(endpoint(request))} detections"
    except ValueError as error:
        result = f"400: {error}"
    seconds = time.perf_counter() - start
    print(json.dumps({"loaded_gib": loaded, "peak_gib": peak_gib(), "seconds": seconds, "jpeg_mb": len(data) / 1e6,
                      "result": result}))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a converted model folder (with handler.py)")
    parser.add_argument("--sizes", nargs="+", default=["4000x3000", "6000x5000", "8000x5000"])
    parser.add_argument("--bodies", nargs="+", default=["json", "raw"], choices=["json", "raw"])
    options = parser.parse_args()
    print(f"{'image':>12} {'MP':>6} {'body':>5} {'loaded GiB':>10} {'peak GiB':>9} {'seconds':>8}  result")
    for size in options.sizes:
        width, height = (int(v) for v in size.split("x"))
        for body in options.bodies:
            completed = subprocess.run(
                [sys.executable, "-c", REQUEST, options.folder, str(width), str(height), body],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(completed.stdout.strip().splitlines()[-1])
            print(
                f"{size:>12} {width * height / 1e6:6.1f} {body:>5} {row['loaded_gib']:10.2f} {row['peak_gib']:9.2f} "
                f"{row['seconds']:8.1f}  {row['result'][:100]}"
            )


if __name__ == "__main__":
    main()
