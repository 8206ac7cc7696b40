"""Error types users see. The CLI prints them as one line; the app shows them in the UI."""

from __future__ import annotations


class AnimalclsError(Exception):
    """Base class for every error caused by user input or the environment, not by a bug."""


class DataError(AnimalclsError, ValueError):
    """A dataset folder is missing, empty or does not hold the selected classes."""


class ImageError(AnimalclsError, ValueError):
    """An input is not a usable image (not an image, truncated, too large...)."""


class WeightsUnavailableError(AnimalclsError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


class CheckpointError(AnimalclsError, ValueError):
    """A checkpoint folder is incomplete, corrupt or inconsistent."""


class HubError(AnimalclsError, RuntimeError):
    """The Hugging Face Hub could not be reached or refused a request."""


class Cancelled(AnimalclsError):
    """Work stopped because the user asked it to (a cancel button, for example)."""
