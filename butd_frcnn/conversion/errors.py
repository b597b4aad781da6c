"""The one base class of every error the conversion tool reports to its user (the CLI prints these without a
traceback)."""


class ConversionError(ValueError):
    """A checkpoint, prototxt, vocabulary or output folder the converter cannot use; the message says which and why."""
