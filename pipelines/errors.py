"""Errors a user can act on. Each message says what was wrong and what to do; none needs a stack trace."""


class StudioError(Exception):
    """Base class: anything the CLI and the server report as a one-line message."""


class InvalidRequest(StudioError, ValueError):
    """A generation request the engine refuses (bad prompt type, steps, size or seed)."""


class InvalidModel(StudioError, ValueError):
    """A model name, folder or manifest that cannot describe a model."""


class WeightsUnavailable(StudioError):
    """Weights that are neither on disk nor reachable; the message names the repo, the file and how to get it."""


class BackendUnavailable(StudioError):
    """A backend whose optional dependency or hardware is missing."""


class NonFiniteOutput(StudioError):
    """The model produced NaN/Inf: reported instead of returning a black image."""


def capped(value, limit: int = 64) -> str:
    """A value echoed in an error message, cut to `limit` characters with an ellipsis: a pasted paragraph or a
    4,000-digit number must not come back in full."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
