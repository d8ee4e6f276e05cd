"""One exception family for pagcp: every error names the file, layer or flag at fault."""

from __future__ import annotations


class PagcpError(Exception):
    """Base class of every error pagcp raises on purpose."""


class ConfigError(PagcpError, ValueError):
    """A model yaml, data yaml or setting is malformed or inconsistent."""


class CheckpointError(PagcpError, ValueError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the request."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


class DataError(PagcpError, ValueError):
    """A dataset split is missing or holds no usable images."""


class TraceError(PagcpError, RuntimeError):
    """The model could not be traced into a channel graph."""


class BackendUnavailableError(PagcpError, RuntimeError):
    """An explicitly requested op backend (cpp, triton, cuda) is not available."""
