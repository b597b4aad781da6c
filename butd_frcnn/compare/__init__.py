"""The fidelity report: compare two feature files (ours against the released ones, or any two) image by image."""

from .compare import compare_files
from .metrics import ImageComparison, compare_images
from .report import ComparisonReport, Thresholds

__all__ = ["ComparisonReport", "ImageComparison", "Thresholds", "compare_files", "compare_images"]
