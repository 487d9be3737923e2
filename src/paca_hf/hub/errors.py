"""The error of the Hub layer."""


class PublishError(RuntimeError):
    """A repo that must not be written or uploaded: its checkpoint is missing, or the built repo failed a check."""
