"""Celery tasks queued at most once per arguments (needs Celery: the extra ``kannuki[celery]``).

::

    from kannuki.contrib.celery import UniqueTask

    locker = kannuki.Locker("redis://cache/0")

    @app.task(base=UniqueTask, unique_locker=locker, unique_ttl=3600)
    def rebuild_index(shop_id): ...

    rebuild_index.delay(3)      # queued
    rebuild_index.delay(3)      # skipped while the first is queued or running: a DuplicateTask result
    rebuild_index.delay(4)      # queued: other arguments

A :class:`UniqueTask` takes its lock when the task is sent (``delay()`` /
``apply_async()``), not when a worker starts it, and hands the hold to the
worker inside the message (a hand-off ticket in a message header,
``Lock.detach()``). The worker takes the hold over (``Locker.adopt()``), runs
the task, and releases it when the task returns or raises; a task revoked or
expired before it ran has its hold released by the worker that discards it
(Celery's ``task_revoked`` signal). A retry passes the hold on to the retried
message, so the task stays unique across its countdown.

Leases cover what nobody is left to release: a message lost in the queue keeps
its key for ``unique_ttl`` at most, and a worker that dies while running frees it
within ``unique_run_ttl`` (the running hold is renewed every third of that). Every
release is the store's compare-and-delete, so a late release (a revoke after the
lease ran out, a stale message) never frees a newer holder's lock.

The store must keep its holds in the store alone, so that one process can take
a lock and another release it: ``redis://`` or ``sqlite://`` across processes and
hosts, ``memory://`` within one process (tests, ``task_always_eager``).
PostgreSQL, MySQL, file and etcd holds live in a connection or descriptor of the
process that took them: use the decorators (``@locker.unique()`` under
``@app.task``) there, which lock around the task's body in the worker.

Options, as keywords of ``@app.task(base=UniqueTask, ...)`` or attributes of a
subclass:

``unique_locker``
    The :class:`kannuki.Locker` (None: the default locker of ``kannuki.configure``).
``unique_key``
    None: ``"celery:<task name>(<canonical arguments>)"`` as :func:`kannuki.unique`
    encodes them (a ``bind=True`` task's ``self`` is not part of it). A
    ``str.format`` template over the task's parameters (``"report/{account_id}"``),
    or a callable getting the task's arguments and returning the key.
``unique_ttl``
    Seconds a queued task keeps its key without a worker (3600). It must cover the
    time a task waits in the queue, retry countdowns included.
``unique_run_ttl``
    The lease of a running task, renewed every third (60 seconds).
``unique_on_duplicate``
    ``"skip"`` (``apply_async`` returns a :class:`DuplicateTask` result; a worker that
    meets a duplicate anyway returns None without running it) or ``"raise"``
    (:class:`DuplicateTaskError`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

try:
    from celery import Task, signals, states
    from celery.result import EagerResult
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "kannuki.contrib.celery needs Celery: install the extra with pip install 'kannuki[celery]'"
    ) from exc

from kannuki import _decorate, _default
from kannuki._locker import Locker
from kannuki.backends._types import Holder
from kannuki.errors import LockLostError, LockNotAcquiredError
from kannuki.options import check_seconds

__all__ = ["HEADER", "DuplicateTask", "DuplicateTaskError", "UniqueTask"]

log = logging.getLogger("kannuki")

# The message header that carries the hand-off ticket of the task's hold.
HEADER = "kannuki_ticket"
# Where a running task's hold is kept on its request, for a retry to pass on.
_RUNNING = "kannuki_hold"

ON_DUPLICATE = ("skip", "raise")


class DuplicateTaskError(LockNotAcquiredError):
    """A task with the same key is already queued or running (``unique_on_duplicate="raise"``)."""


class DuplicateTask(EagerResult):  # type: ignore[misc]  # celery ships no type hints
    """What ``apply_async()`` / ``delay()`` return for a skipped duplicate: nothing was sent.

    ``key`` is the task's lock key and ``holder`` who holds it, as far as the store
    tells (a :class:`kannuki.Holder`, or None). It is ready at once, in the state
    ``REJECTED``, with no id; ``get()`` returns None.
    """

    def __init__(self, key: str, holder: Holder | None = None, name: str | None = None) -> None:
        super().__init__(None, None, states.REJECTED, name=name)
        self.key = key
        self.holder = holder

    def __reduce_args__(self) -> tuple[Any, ...]:
        return (self.key, self.holder, self._name)

    def __repr__(self) -> str:
        return f"<DuplicateTask {self.key!r}>"


class UniqueTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """A Celery task queued at most once per key: a duplicate sent while one is queued or running is skipped.

    See the module's documentation for the options (``unique_locker``,
    ``unique_key``, ``unique_ttl``, ``unique_run_ttl``, ``unique_on_duplicate``).
    """

    unique_locker: Locker | None = None
    unique_key: str | Callable[..., str] | None = None
    unique_ttl: float = 3600.0
    unique_run_ttl: float = 60.0
    unique_on_duplicate: str = "skip"

    # -- sending --------------------------------------------------------------------

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        *more: Any,
        **options: Any,
    ) -> Any:
        """Send the task unless one with the same key is queued or running (then see ``unique_on_duplicate``).

        The lock is taken here, with a lease of ``unique_ttl``, and travels in the
        message; if sending fails, it is released again.
        """
        locker = self._unique_locker()
        key = self.unique_key_for(tuple(args or ()), dict(kwargs or {}))
        ticket = self._pass_on(key, task_id)
        if ticket is None:
            lock = locker.lock(key, ttl=self.unique_ttl)
            if not lock.acquire(blocking=False):
                return self._duplicate(lock)
            try:
                ticket = lock.detach()
            except BaseException:  # a store whose holds cannot travel (NotSupportedError): give it back
                lock.release()
                raise
        headers = dict(options.pop("headers", None) or {})
        headers[HEADER] = ticket
        try:
            return super().apply_async(args, kwargs, task_id, *more, headers=headers, **options)
        except BaseException:
            _release(locker, ticket)
            raise

    def unique_key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The lock key of a call with ``args`` and ``kwargs`` (the task's own arguments, no ``self``)."""
        make_key = self.__dict__.get("_unique_make_key")
        if make_key is None:
            make_key = self._unique_make_key = _key_maker(self)
        return make_key(args, kwargs)

    def _pass_on(self, key: str, task_id: str | None) -> str | None:
        """A retry of the running task, with the same key: its hold goes on with the retried message."""
        request = self.request
        lock = getattr(request, _RUNNING, None)
        if lock is None or task_id is None or task_id != request.id or lock.key != key or not lock.locked():
            return None
        lock.extend(ttl=self.unique_ttl)  # from now on it waits in the queue (its countdown)
        setattr(request, _RUNNING, None)
        ticket: str = lock.detach()
        return ticket

    def _duplicate(self, lock: Any) -> DuplicateTask:
        try:
            holders = lock.holders()
        except Exception:  # who holds it is a courtesy; never mask the outcome
            holders = []
        holder = holders[0] if holders else None
        if self._on_duplicate() == "raise":
            who = f"; held by {holder.describe()}" if holder is not None else ""
            raise DuplicateTaskError(
                f"the task {self.name} with these arguments is already queued or running "
                f"(lock {lock.key!r}){who}",
                key=lock.key,
                holder=holder,
            )
        log.info("kannuki: skipped a duplicate of %s (lock %r)", self.name, lock.key)
        return DuplicateTask(lock.key, holder, self.name)

    # -- running --------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task holding its key: the hold its message brought, or (none, or gone) one taken now."""
        locker = self._unique_locker()
        request = self.request
        lock = None
        ticket = _ticket_of(request)
        if ticket is not None:
            try:
                lock = locker.adopt(ticket, ttl=self.unique_run_ttl)
            except LockLostError:
                log.warning(
                    "kannuki: the hold sent with %s[%s] had run out before it started (unique_ttl too short?); "
                    "taking the key anew",
                    self.name,
                    request.id,
                )
        if lock is None:
            key = self.unique_key_for(args, kwargs)
            lock = locker.lock(key, ttl=self.unique_run_ttl)
            if not lock.acquire(blocking=False):
                self._duplicate(lock)  # raises for "raise"
                return None
        setattr(request, _RUNNING, lock)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            setattr(request, _RUNNING, None)
            if lock.locked():  # not passed on to a retry
                try:
                    lock.release()
                except LockLostError as exc:  # reported already (on_lost, events); the task's outcome stands
                    log.warning("kannuki: %s", exc)

    # -- options ----------------------------------------------------------------------

    def _unique_locker(self) -> Locker:
        """The locker, after checking every option once: errors name the task and the option."""
        locker = self.unique_locker if self.unique_locker is not None else _default.get_locker()
        if _decorate._is_async_locker(locker):
            raise TypeError(f"{self.name}: unique_locker must be a kannuki.Locker, not an AsyncLocker")
        for option in ("unique_ttl", "unique_run_ttl"):
            if not check_seconds(getattr(self, option), f"{self.name}: {option}", allow_none=False):
                raise ValueError(f"{self.name}: {option} must be > 0 seconds")
        self._on_duplicate()
        return locker

    def _on_duplicate(self) -> str:
        if self.unique_on_duplicate not in ON_DUPLICATE:
            raise ValueError(
                f"{self.name}: unique_on_duplicate must be 'skip' or 'raise', not {self.unique_on_duplicate!r}"
            )
        return self.unique_on_duplicate


def _key_maker(task: UniqueTask) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    """The key function of ``task``, from its ``unique_key`` option and its ``run`` signature."""
    run = task.run  # a bind=True task's run is bound to the task: its signature has no ``self``
    key = task.unique_key
    if inspect.ismethod(key) and key.__self__ is task:  # a function given to @app.task is a class attribute
        key = key.__func__
    if key is None:
        signature = inspect.signature(run)
        prefix = f"celery:{task.name}"

        def canonical(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return f"{prefix}({_decorate.unique_key(signature, args, kwargs)})"

        return canonical
    if isinstance(key, str):
        if not key:
            raise ValueError(f"{task.name}: unique_key must be a non-empty template, a callable or None")
        return _decorate._template_filler(key, run)
    if callable(key):
        return _decorate._caller(key)
    raise TypeError(f"{task.name}: unique_key must be a str template, a callable or None, not {key!r}")


def _ticket_of(request: Any) -> str | None:
    """The hand-off ticket a task's message brought (a worker's request, or an eager one's headers)."""
    ticket = getattr(request, HEADER, None)
    if ticket is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            ticket = headers.get(HEADER)
    return ticket if isinstance(ticket, str) else None


def _release(locker: Locker, ticket: str) -> bool:
    """Release the hold ``ticket`` names, if it is still the one held; never raises. Released?"""
    try:
        locker.adopt(ticket).release()
    except LockLostError:  # already released, or run out: nothing of ours to free
        return False
    except Exception as exc:  # the store is down: the lease runs out by itself
        log.warning("kannuki: releasing a task's hold failed: %s", exc)
        return False
    return True


def _release_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A task revoked (or expired) before it ran, or terminated: release the hold its message brought."""
    if not isinstance(sender, UniqueTask) or request is None:
        return
    ticket = _ticket_of(request)
    if ticket is not None:
        try:
            locker = sender._unique_locker()
        except Exception as exc:
            log.warning("kannuki: no locker to release %s[%s]: %s", sender.name, request.id, exc)
            return
        _release(locker, ticket)


signals.task_revoked.connect(_release_revoked, weak=False)
