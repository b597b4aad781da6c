"""Files that a converted Hub folder carries next to the model: the Inference Endpoints handler (`handler.py`, which
must import nothing from this package) and the packages the endpoint installs (`requirements.txt`).
`butd_frcnn.remote_code.write_hub_files` copies them."""
