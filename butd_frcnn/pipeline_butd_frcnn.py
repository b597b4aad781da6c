"""Pipelines that say more than the stock ones: the attribute of each detection ("red car"), and the features of
given regions.

- The stock `object-detection` pipeline keeps only `score`, `label` and `box` of each detection and names the label
  through `model.config.id2label`, so attributes cannot pass through it. `ButdFrcnnObjectDetectionPipeline` keeps
  everything else of it and adds the attribute.
- The stock `image-feature-extraction` pipeline returns the selected regions' features; it passes given regions on
  only through `image_processor_kwargs={"boxes": ...}` (and ignores any argument it does not know).
  `ButdFrcnnImageFeatureExtractionPipeline` takes them as `boxes=`.

Pass them as `pipeline(task, model=..., pipeline_class=...)`. The file imports only torch and transformers, so it
also travels in the Hub folder: without the package,
`get_class_from_dynamic_module("pipeline_butd_frcnn.ButdFrcnnObjectDetectionPipeline", repo_id)` loads it.
"""

from typing import Any

import torch
from transformers.pipelines import ImageFeatureExtractionPipeline, ObjectDetectionPipeline


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


class ButdFrcnnImageFeatureExtractionPipeline(ImageFeatureExtractionPipeline):
    """`image-feature-extraction` that also describes given regions: `extractor(image, boxes=[[x1, y1, x2, y2], ...])`
    returns the features of exactly those boxes, in that order (`(1, K, 2048)`; image pixels, inclusive
    convention). Without `boxes`, the selected regions' features, as the stock pipeline returns them.

    Args (per call):
        boxes (`(K, 4)` array-like, *optional*): the regions of the one image of the call.
    """

    def _sanitize_parameters(
        self, boxes: Any = None, image_processor_kwargs: dict | None = None, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        """Routes `boxes` to the image processor, which hands them to the model (the hook every pipeline implements
        to route its call arguments; its signature is pinned by tests/test_transformers_pins.py)."""
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(
            image_processor_kwargs=dict(image_processor_kwargs or {}), **kwargs
        )
        if boxes is not None:
            preprocess_params["boxes"] = boxes
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("boxes") is not None and isinstance(inputs, (list, tuple)) and len(inputs) != 1:
            raise ValueError("boxes= gives the regions of one image: call the pipeline once per image")
        return super().__call__(inputs, *args, **kwargs)


__all__ = ["ButdFrcnnImageFeatureExtractionPipeline", "ButdFrcnnObjectDetectionPipeline"]
