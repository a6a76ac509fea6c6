"""RQ jobs queued at most once per arguments (needs RQ: the extra ``kannuki[rq]``).

::

    from kannuki.contrib.rq import unique_job

    locker = kannuki.Locker("redis://cache/0")

    @unique_job(locker=locker, ttl=3600)
    def rebuild_index(shop_id): ...

    rebuild_index.enqueue(queue, 3)     # a Job: queued
    rebuild_index.enqueue(queue, 3)     # None: skipped while the first is queued or running
    rebuild_index.enqueue(queue, 4)     # a Job: other arguments

``enqueue()`` takes the lock, with a lease of ``ttl``, and hands the hold to the
worker inside the job (a hand-off ticket in the job's ``meta``,
``Lock.detach()``). The worker takes the hold over (``Locker.adopt()``) with a
lease of ``run_ttl``, renewed every third of it, runs the function, and releases
the key when it returns or raises. If enqueueing fails, the key is released at
once. Called any other way (directly, or enqueued with ``queue.enqueue``), the
function takes the key itself while it runs.

Leases cover what nobody is left to release: a job deleted or cancelled before it
ran keeps its key for ``ttl`` at most (so ``ttl`` must cover the time a job waits
in the queue), and a worker killed while running frees it within ``run_ttl``.
Every release is the store's compare-and-delete, so a late release never frees a
newer holder's lock.

The store must keep its holds in the store alone, so that one process can take a
lock and another release it: ``redis://`` or ``sqlite://``. Other stores are
refused by ``enqueue()`` with NotSupportedError, holding nothing; there, put
``@locker.unique()`` on the job function, which locks around its body in the
worker.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

try:
    import rq
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "kannuki.contrib.rq needs RQ: install the extra with pip install 'kannuki[rq]'"
    ) from exc

from kannuki import _decorate, _default
from kannuki._lock import Lock
from kannuki._locker import Locker
from kannuki.errors import LockLostError, LockNotAcquiredError, NotSupportedError
from kannuki.options import check_seconds

__all__ = ["META", "JobAlreadyQueuedError", "UniqueJob", "unique_job"]

log = logging.getLogger("kannuki")

# The key of the job's meta that carries the hand-off ticket of its hold.
META = "kannuki_ticket"

ON_DUPLICATE = ("skip", "raise")
# Stores whose holds live in the store alone: a worker can release what the sender took.
HANDOFF_STORES = ("redis", "sqlite")


class JobAlreadyQueuedError(LockNotAcquiredError):
    """A job with the same key is already queued or running (``on_duplicate="raise"``)."""


class UniqueJob:
    """A job function queued at most once per key; made by :func:`unique_job`.

    Calling it runs the function (in a worker, under the hold its job brought);
    :meth:`enqueue` queues it unless a job with the same key is queued or running.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        locker: Locker | None,
        key: str | Callable[..., str] | None,
        ttl: float,
        run_ttl: float,
        on_duplicate: str,
    ) -> None:
        if not callable(fn) or inspect.iscoroutinefunction(fn):
            raise TypeError(f"unique_job decorates a plain function, not {fn!r}")
        name = f"{fn.__module__}.{fn.__qualname__}"
        if "<" in fn.__qualname__:  # a lambda or a function defined in a function: no worker can import it
            raise TypeError(f"unique_job: {name} cannot be imported by a worker; define it at module level")
        if locker is not None and not isinstance(locker, Locker):
            raise TypeError(f"unique_job: locker must be a kannuki.Locker (or None), not {locker!r}")
        for option, value in (("ttl", ttl), ("run_ttl", run_ttl)):
            if not check_seconds(value, f"unique_job: {option}", allow_none=False):
                raise ValueError(f"unique_job: {option} must be > 0 seconds")
        if on_duplicate not in ON_DUPLICATE:
            raise ValueError(f"unique_job: on_duplicate must be 'skip' or 'raise', not {on_duplicate!r}")
        self._fn = fn
        self.name = name
        self.locker = locker
        self.ttl = float(ttl)
        self.run_ttl = float(run_ttl)
        self.on_duplicate = on_duplicate
        self._make_key = _key_maker(fn, key, name)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<UniqueJob {self.name}>"

    def __reduce__(self) -> str:
        # Pickled by name (plain ``queue.enqueue(fn, ...)`` pickles a callable object): a worker
        # imports the module's own UniqueJob, locker included.
        return self._fn.__qualname__

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The lock key of a call with these arguments."""
        return self._make_key(args, kwargs)

    # -- enqueueing ----------------------------------------------------------------------

    def enqueue(self, queue: Any, *args: Any, **kwargs: Any) -> Any:
        """Queue a job of this function on ``queue`` (an ``rq.Queue``) unless one with the same key is queued or running.

        Arguments as ``queue.enqueue(f, *args, **kwargs)`` takes them, RQ's own
        options (``job_timeout``, ``meta``, ``args=``/``kwargs=`` ...) included.
        Returns the ``rq.job.Job``, or None for a skipped duplicate
        (``on_duplicate="skip"``); raises :class:`JobAlreadyQueuedError` for
        ``"raise"``, and NotSupportedError, holding nothing, on a store whose holds
        cannot pass to a worker.
        """
        locker = self._locker()
        if locker.backend.scheme not in HANDOFF_STORES:
            raise NotSupportedError(
                f"{self.name}: unique_job needs a store whose holds a worker can take over "
                f"(redis:// or sqlite://), not {locker.backend.scheme}://; use @locker.unique() on the job function"
            )
        parsed = queue.parse_args(self.name, *args, **kwargs)
        call_args, call_kwargs = tuple(parsed.args or ()), dict(parsed.kwargs or {})
        lock = locker.lock(self._make_key(call_args, call_kwargs), ttl=self.ttl)
        if not lock.acquire(blocking=False):
            return self._duplicate(lock)
        try:
            ticket = lock.detach()
        except BaseException:
            lock.release()
            raise
        meta = dict(parsed.meta or {})
        meta[META] = ticket
        try:
            return queue.enqueue(self.name, *args, **{**kwargs, "meta": meta})
        except BaseException:
            _release(locker, ticket)
            raise

    def _duplicate(self, lock: Lock) -> None:
        if self.on_duplicate == "raise":
            try:
                holders = lock.holders()
            except Exception:  # who holds it is a courtesy; never mask the outcome
                holders = []
            holder = holders[0] if holders else None
            who = f"; held by {holder.describe()}" if holder is not None else ""
            raise JobAlreadyQueuedError(
                f"a job of {self.name} with these arguments is already queued or running (lock {lock.key!r}){who}",
                key=lock.key,
                holder=holder,
            )
        log.info("kannuki: skipped a duplicate of %s (lock %r)", self.name, lock.key)
        return None

    # -- running -------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function holding its key: the hold its job brought, or (none, or gone) one taken now."""
        locker = self._locker()
        lock = None
        ticket = _ticket_of_current_job(self.name)
        if ticket is not None:
            try:
                lock = locker.adopt(ticket, ttl=self.run_ttl)
            except LockLostError:
                log.warning(
                    "kannuki: the hold enqueued with %s had run out before it started (ttl too short?); "
                    "taking the key anew",
                    self.name,
                )
        if lock is None:
            lock = locker.lock(self._make_key(args, kwargs), ttl=self.run_ttl)
            if not lock.acquire(blocking=False):
                return self._duplicate(lock)
        try:
            return self._fn(*args, **kwargs)
        finally:
            try:
                lock.release()
            except LockLostError as exc:  # reported already (on_lost, events); the job's outcome stands
                log.warning("kannuki: %s", exc)

    def _locker(self) -> Locker:
        locker = self.locker if self.locker is not None else _default.get_locker()
        if _decorate._is_async_locker(locker):
            raise TypeError(f"{self.name}: the locker must be a kannuki.Locker, not an AsyncLocker")
        return locker


def unique_job(
    fn: Callable[..., Any] | None = None,
    *,
    locker: Locker | None = None,
    key: str | Callable[..., str] | None = None,
    ttl: float = 3600.0,
    run_ttl: float = 60.0,
    on_duplicate: str = "skip",
) -> Any:
    """Make a module-level function an RQ job queued at most once per key (``@unique_job`` or ``@unique_job(...)``).

    ``locker``: a :class:`kannuki.Locker` on ``redis://`` or ``sqlite://`` (None:
    the default locker of ``kannuki.configure``, looked up at each call). ``key``:
    None for ``"rq:<module>.<name>(<canonical arguments>)"`` as
    :func:`kannuki.unique` encodes them, a ``str.format`` template over the
    function's parameters (``"report/{account_id}"``), or a callable getting the
    arguments and returning the key. ``ttl``: seconds a queued job keeps its key
    with nobody running it (3600). ``run_ttl``: the lease of a running job, renewed
    every third (60). ``on_duplicate``: ``"skip"`` (``enqueue()`` returns None; a
    worker that meets a duplicate anyway returns None without running it) or
    ``"raise"`` (:class:`JobAlreadyQueuedError`).
    """

    def wrap(function: Callable[..., Any]) -> UniqueJob:
        return UniqueJob(
            function, locker=locker, key=key, ttl=ttl, run_ttl=run_ttl, on_duplicate=on_duplicate
        )

    return wrap if fn is None else wrap(fn)


def _key_maker(
    fn: Callable[..., Any], key: str | Callable[..., str] | None, name: str
) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    if key is None:
        signature = inspect.signature(fn)
        prefix = f"rq:{name}"

        def canonical(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return f"{prefix}({_decorate.unique_key(signature, args, kwargs)})"

        return canonical
    if isinstance(key, str):
        if not key:
            raise ValueError(f"unique_job: key of {name} must be a non-empty template, a callable or None")
        return _decorate._template_filler(key, fn)
    if callable(key):
        return _decorate._caller(key)
    raise TypeError(f"unique_job: key of {name} must be a str template, a callable or None, not {key!r}")


def _ticket_of_current_job(name: str) -> str | None:
    """The ticket of the job running now, when it is a job of ``name`` (not one that calls it directly)."""
    job = rq.get_current_job()
    if job is None or job.func_name != name:
        return None
    ticket = job.meta.get(META)
    return ticket if isinstance(ticket, str) else None


def _release(locker: Locker, ticket: str) -> None:
    """Release the hold ``ticket`` names, if it is still the one held; never raises."""
    try:
        locker.adopt(ticket).release()
    except LockLostError:  # already released, or run out: nothing of ours to free
        pass
    except Exception as exc:  # the store is down: the lease runs out by itself
        log.warning("kannuki: releasing a job's hold failed: %s", exc)
