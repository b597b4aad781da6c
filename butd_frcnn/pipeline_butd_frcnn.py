"""The `object-detection` pipeline with the attribute of each detection ("red car").

The stock pipeline keeps only `score`, `label` and `box` of each detection and names the label through
`model.config.id2label`, so attributes cannot pass through it. This subclass keeps everything else of it and adds
the attribute; pass it as `pipeline("object-detection", model=..., pipeline_class=ButdFrcnnObjectDetectionPipeline)`.

The file imports only transformers, so it also travels in the Hub folder: without the package,
`get_class_from_dynamic_module("pipeline_butd_frcnn.ButdFrcnnObjectDetectionPipeline", repo_id)` loads it.
"""

from typing import Any

from transformers.pipelines import ObjectDetectionPipeline


class ButdFrcnnObjectDetectionPipeline(ObjectDetectionPipeline):
    """Detections as `{"score", "label", "box", "attribute", "attribute_score"}`.

    Args (at construction or per call):
        threshold (`float`, *optional*, defaults to 0.5): minimum object score of a returned region.
        attribute_in_label (`bool`, *optional*, defaults to `False`): make `label` read "attribute object"
            ("red car") instead of the object alone.
    """

    def check_model_type(self, supported_models):
        """The stock check lists only built-in detectors and would log an error for this (supported) model."""
        if getattr(self.model.config, "model_type", None) != "butd_frcnn":
            super().check_model_type(supported_models)

    def _sanitize_parameters(self, attribute_in_label: bool | None = None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if attribute_in_label is not None:
            postprocess_params["attribute_in_label"] = attribute_in_label
        return preprocess_params, forward_params, postprocess_params

    def postprocess(self, model_outputs, threshold: float = 0.5, attribute_in_label: bool = False):
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
                    "box": self._get_bounding_box(box),
                    "attribute": attribute_name,
                    "attribute_score": attribute_score,
                }
            )
        return annotations


__all__ = ["ButdFrcnnObjectDetectionPipeline"]
