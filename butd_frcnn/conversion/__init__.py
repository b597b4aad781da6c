"""The conversion tool: the original Caffe weights (or a PyTorch copy of them) -> a Hub-ready folder -> the Hub.

Modules: `caffemodel` (protobuf reader, no Caffe), `prototxt` (text-format network definition), `checkpoints` (.pt
layouts), `weights` (the mapping table), `vocab`, `model_card`, `convert` (the folder), `push` (to the Hub), `cli`.
Import from the modules themselves; importing this package loads nothing heavy.
"""
