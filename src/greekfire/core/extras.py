"""Optional extras: which installed packages a part of greekfire needs beyond the lean base install.

``pip install greekfire`` brings what the core commands need (settings, pricing, market, data, paper
trading). Training needs the ``train`` extra and the HTTP servers the ``serve`` extra; a package that
needs an extra calls :func:`require_extra` first, so a missing one ends in one line naming the extra to
install instead of a ``ModuleNotFoundError`` deep inside an import.
"""

from __future__ import annotations

from importlib.util import find_spec

from greekfire.core.errors import GreekfireError

# the importable modules each extra provides (pyproject.toml [project.optional-dependencies] installs them)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("lightning", "tensorboard", "mlflow", "hydra", "omegaconf"),
    "serve": ("fastapi", "uvicorn"),
    "cloud": ("gcsfs", "adlfs"),  # gs:// and az:// storage (greekfire.data.storage imports them per URL)
    "wheel": ("matplotlib",),
}


class MissingExtraError(GreekfireError, ImportError):
    """A part of greekfire was used whose optional extra is not installed.

    It is an ``ImportError`` too, so code that treats an absent optional package as absent still works.
    """

    def __init__(self, extra: str, missing: list[str], feature: str) -> None:
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs the '{extra}' extra (missing: {', '.join(missing)}): "
            f"pip install 'greekfire[{extra}]'"
        )


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty when the extra is installed)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}: allowed {sorted(EXTRAS)}")
    return [m for m in EXTRAS[extra] if find_spec(m) is None]


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` when any of its modules is not installed.

    ``feature`` names what needed it (``"greekfire.ml (training)"``) for the message.
    """
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(extra, missing, feature)
