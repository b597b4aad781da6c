"""A tiny random ButdFrcnnModel and inputs for it, transformers-style (`ModelTester`): what the common-model tests
build on."""

import torch
from golden import tiny_config

from butd_frcnn import ButdFrcnnConfig, ButdFrcnnModel


class ButdFrcnnModelTester:
    """A TINY-architecture config with short proposal lists, and a padded batch of two images of different sizes,
    as the image processor would give them (BGR, mean-subtracted: values of about +-100)."""

    def __init__(
        self,
        image_sizes: tuple[tuple[int, int], ...] = ((64, 96), (80, 64)),
        scales: tuple[float, ...] = (1.5, 0.8),
        proposals: int = 20,
        seed: int = 0,
    ):
        self.image_sizes = image_sizes
        self.scales = scales
        self.proposals = proposals
        self.seed = seed

    def get_config(self, **overrides) -> ButdFrcnnConfig:
        settings = {
            "rpn_pre_nms_top_n": 5 * self.proposals,
            "rpn_post_nms_top_n": self.proposals,
            "min_boxes": 3,
            "max_boxes": 8,
            "score_threshold": 0.001,
        }
        return tiny_config(**{**settings, **overrides})

    def prepare_inputs(self) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        height = max(h for h, _ in self.image_sizes)
        width = max(w for _, w in self.image_sizes)
        pixel_values = torch.zeros(len(self.image_sizes), 3, height, width)
        for i, (h, w) in enumerate(self.image_sizes):
            pixel_values[i, :, :h, :w] = torch.randn(3, h, w, generator=generator) * 60
        sizes = torch.tensor(self.image_sizes)
        return {
            "pixel_values": pixel_values,
            "image_sizes": sizes,
            "scales": torch.tensor(self.scales, dtype=torch.float64),
            "original_sizes": (sizes.double() / torch.tensor(self.scales, dtype=torch.float64)[:, None])
            .round()
            .long(),
        }

    def create_model(self, **overrides) -> ButdFrcnnModel:
        torch.manual_seed(self.seed)
        return ButdFrcnnModel(self.get_config(**overrides)).eval()

    def prepare_config_and_inputs(self) -> tuple[ButdFrcnnConfig, dict[str, torch.Tensor]]:
        return self.get_config(), self.prepare_inputs()
