"""User-facing errors.

A `UserError` is a mistake in something the user gave us (config, DICOM folder, decoder bundle,
command-line argument). The CLI prints its message as one line and exits 2, with no traceback,
so every message must name the file or key and say what was expected.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; printed as one line by the CLI."""


class ConfigError(UserError):
    """A session config that cannot be used (unknown key, wrong type, out-of-range value)."""


class DicomError(UserError):
    """A DICOM file or folder that cannot be assembled into volumes."""


class IncompleteFile(DicomError):
    """A file that is (probably) still being written; try again later."""


class BundleError(UserError):
    """A decoder bundle that is corrupt, truncated or incompatible."""
