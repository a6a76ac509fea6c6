"""The MySQL/MariaDB lock name kannuki sends for a full lock name (prefix:key).

User-level lock names on MySQL/MariaDB are server-wide, compared without
regard to letter case, and at most 64 characters long. So the name sent is:

* ``"kannuki:" + full_name`` when that is at most 64 characters and
  ``full_name`` uses only ``a-z 0-9 . _ : / @ = + -`` (readable, and no two
  such names can be equal under any collation);
* otherwise ``"kannuki:" + head + "#" + digest``: ``digest`` is the first 32
  hex digits (128 bits) of SHA-256 over the UTF-8 bytes of ``full_name``,
  and ``head`` is the first 23 characters of ``full_name``, each ASCII
  letter lower-cased and every other character outside the readable set
  replaced by ``_`` (for people reading SHOW PROCESSLIST; the digest alone
  tells names apart).

A readable name never contains ``#``, so the two forms never meet; keys that
differ only in case, or only after character 64, get different digests.
"""

from __future__ import annotations

import functools
import hashlib
import re

__all__ = ["NAMESPACE", "mysql_lock_name"]

NAMESPACE = "kannuki:"
MAX_SERVER_NAME = 64
DIGEST_HEX = 32
HEAD_CHARS = MAX_SERVER_NAME - len(NAMESPACE) - 1 - DIGEST_HEX  # 23

_readable = re.compile(rf"[a-z0-9._:/@=+\-]{{1,{MAX_SERVER_NAME - len(NAMESPACE)}}}").fullmatch
_unreadable_char = re.compile(r"[^A-Za-z0-9._:/@=+\-]")


@functools.lru_cache(maxsize=4096)
def mysql_lock_name(full_name: str) -> str:
    """The GET_LOCK name kannuki uses on MySQL/MariaDB for ``full_name`` (``prefix:key``).

    Short lower-case names stay readable (``"kannuki:jobs:nightly"``); any
    other name is a readable head plus a 128-bit SHA-256 digest, 64
    characters at most. Any client can compute the same name with the rule
    in this module's docstring.

    Example::

        >>> mysql_lock_name("jobs:nightly")
        'kannuki:jobs:nightly'
    """
    if _readable(full_name):
        return NAMESPACE + full_name
    digest = hashlib.sha256(full_name.encode("utf-8")).hexdigest()[:DIGEST_HEX]
    head = _unreadable_char.sub("_", full_name[:HEAD_CHARS]).lower()  # ASCII only by now
    return f"{NAMESPACE}{head}#{digest}"
