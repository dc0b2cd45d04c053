"""greekfire: GPU-accelerated options research and trading platform.

One package, layered as described in docs/architecture.md: ``core`` at the bottom; ``quant`` and ``gpu``;
``market`` and ``data``; ``trading`` and ``fix``; the systems; then ``api`` and ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("greekfire")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
