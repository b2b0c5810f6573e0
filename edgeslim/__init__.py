"""edgeslim: search-based compression of convolutional networks under an edge device's budget."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeslim")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
