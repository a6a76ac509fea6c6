"""The pure-Python core twin: the same names and behaviour as the compiled ``kannuki._native``.

Used when the extension is not built or ``KANNUKI_NO_EXTENSIONS=1``; see
:mod:`kannuki._coreapi` for the contract.
"""

from kannuki._pure._backoff import Backoff
from kannuki._pure._counters import Counters
from kannuki._pure._hashing import MAX_NAME_BYTES, full_name, hash_text_extended, lock_id, name_and_id
from kannuki._pure._lock import LockBase, PlainPath, SyncLockBase, TokenSet
from kannuki._pure._table import LockTable

__all__ = [
    "MAX_NAME_BYTES",
    "Backoff",
    "Counters",
    "LockBase",
    "LockTable",
    "PlainPath",
    "SyncLockBase",
    "TokenSet",
    "full_name",
    "hash_text_extended",
    "lock_id",
    "name_and_id",
]
