"""recon-audit's science library: operators, sampling, data, metrics (no web stack here)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recon-audit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
