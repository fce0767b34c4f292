"""Installed versions of the libraries compat speaks to, and the versions each use was checked on."""

from __future__ import annotations

import importlib.metadata

# Versions every function below was checked on (the lock and the newest release of the day).
CHECKED = {
    "transformers": ("5.23.0", "5.24.0"),
    "peft": ("0.21.2",),
    "ray": ("2.60.0",),
    "torch": ("2.13.0",),
    "xgrammar": ("0.2.8", "0.2.9"),
}


def version(package: str) -> str:
    """The installed version of a distribution, or 'not installed'."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions_line(*packages: str) -> str:
    """'transformers 5.24.0, torch 2.13.0': for error lines that name the library behind a failure."""
    return ", ".join(f"{p} {version(p)}" for p in packages)


def _release(text: str) -> tuple[int, ...]:
    """(5, 24, 0) of '5.24.0', '5.24.0rc1', '2.13.0+cpu': the release numbers, pre-release tags dropped."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = piece[: len(piece) - len(piece.lstrip("0123456789"))]
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def at_least(package: str, minimum: str) -> bool:
    """Whether the installed `package` is `minimum` or newer (False when it is not installed)."""
    installed = version(package)
    return installed != "not installed" and _release(installed) >= _release(minimum)
