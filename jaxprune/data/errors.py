"""The data layer's one error type."""


class DataError(ValueError):
    """A missing, empty or malformed data, tokenizer or model file (the message names the file)."""
