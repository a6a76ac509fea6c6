"""The module default locker's state: set by ``kannuki.configure()``, read by ``get_locker()``.

Kept apart from :mod:`kannuki.locker` (which builds lockers) so that API modules
that only need "the default locker" (the decorators) import no constructor.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from kannuki import _override
from kannuki.errors import ConfigurationError

if TYPE_CHECKING:
    from kannuki._locker import Locker

__all__ = ["get_locker", "replace"]

_default: Locker | None = None
_guard = threading.Lock()


def replace(locker: Locker | None) -> Locker | None:
    """Make ``locker`` the default; return the previous one."""
    global _default
    with _guard:
        previous, _default = _default, locker
    return previous


def get_locker() -> Locker:
    """The module default locker; ConfigurationError until ``kannuki.configure()`` was called.

    In test mode (``kannuki.testing.enable()``) a memory locker stands in when none was configured.
    """
    locker = _default
    if locker is not None:
        return locker
    factory = _override.default_locker_factory
    if factory is not None:
        return factory()  # type: ignore[no-any-return]
    raise ConfigurationError("no default locker: call kannuki.configure(url, ...) first")
