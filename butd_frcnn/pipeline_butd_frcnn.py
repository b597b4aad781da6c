"""The `object-detection` pipeline with the attribute of each detection ("red car").

The stock pipeline keeps only `score`, `label` and `box` of each detection and names the label through
`model.config.id2label`, so attributes cannot pass through it. This subclass keeps everything else of it and adds
the attribute; pass it as `pipeline("object-detection", model=..., pipeline_class=ButdFrcnnObjectDetectionPipeline)`.

The file imports only torch and transformers, so it also travels in the Hub folder: without the package,
`get_class_from_dynamic_module("pipeline_butd_frcnn.ButdFrcnnObjectDetectionPipeline", repo_id)` loads it.
"""

from typing import Any

import torch
from transformers.pipelines import ObjectDetectionPipeline


def bounding_box(box: torch.Tensor) -> dict[str, int]:
    """A box `(x1, y1, x2, y2)` as the `object-detection` pipeline reports it: whole pixels, truncated, by name."""
    xmin, ymin, xmax, ymax = box.int().tolist()
    return {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}


class ButdFrcnnObjectDetectionPipeline(ObjectDetectionPipeline):
    """Detections as `{"score", "label", "box", "attribute", "attribute_score"}`.

    Args (at construction or per call):
        threshold (`float`, *optional*, defaults to 0.5): minimum object score of a returned region.
        attribute_in_label (`bool`, *optional*, defaults to `False`): make `label` read "attribute object"
            ("red car") instead of the object alone.
    """

    def check_model_type(self, supported_models: list[str] | dict) -> None:
        """The stock check lists only built-in detectors and would log an error for this (supported) model."""
        if getattr(self.model.config, "model_type", None) != "butd_frcnn":
            super().check_model_type(supported_models)

    def _sanitize_parameters(self, attribute_in_label: bool | None = None, **kwargs: Any) -> tuple[dict, dict, dict]:
        """Adds `attribute_in_label` to the stock parameters (the hook every pipeline implements to route its call
        arguments; its signature is pinned by tests/test_transformers_pins.py)."""
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if attribute_in_label is not None:
            postprocess_params["attribute_in_label"] = attribute_in_label
        return preprocess_params, forward_params, postprocess_params

    def postprocess(
        self, model_outputs: dict[str, Any], threshold: float = 0.5, attribute_in_label: bool = False
    ) -> list[dict[str, Any]]:
        detections = self.image_processor.post_process_object_detection(
            model_outputs, threshold, model_outputs["target_size"]
        )[0]
        id2label, attribute_names = self.model.config.id2label, self.model.config.attribute_names
        annotations: list[dict[str, Any]] = []
        for score, label, box, attribute, attribute_score in zip(
            detections["scores"].tolist(),
            detections["labels"].tolist(),
            detections["boxes"],
            detections["attributes"].tolist(),
            detections["attribute_scores"].tolist(),
        ):
            object_name, attribute_name = id2label[label], attribute_names[attribute]
            annotations.append(
                {
                    "score": score,
                    "label": f"{attribute_name} {object_name}" if attribute_in_label else object_name,
                    "box": bounding_box(box),
                    "attribute": attribute_name,
                    "attribute_score": attribute_score,
                }
            )
        return annotations


__all__ = ["ButdFrcnnObjectDetectionPipeline"]
