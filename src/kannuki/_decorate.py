"""The decorators ``locked`` and ``unique`` (public as :mod:`kannuki.decorators`, and ``Locker.locked`` / ``.unique``).

``locked(key)`` takes the key from a ``str.format`` template filled with the
call's arguments (or from a callable); ``unique()`` takes it from the
function's name and a canonical encoding of its arguments, so one call with
given arguments runs at a time across processes and hosts. Both work on plain
and ``async def`` functions and under task decorators such as Celery's
``@app.task`` (``bind=True`` too: the task itself is not part of a unique key).

With a :class:`~kannuki.Locker`, an ``async def`` waits in a worker thread so
the event loop never blocks; with an :class:`~kannuki.AsyncLocker` it waits on
the event loop itself (and an AsyncLocker decorates only ``async def``).

This module is part of the API layer: it knows lockers only by their public
verbs (``lock()``, ``acquire()``, ``release()``, ``held()``) and finds the
module default locker through :mod:`kannuki._default`; it never imports the
Lock or Locker modules at run time.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime
import decimal
import enum
import functools
import hashlib
import inspect
import json
import string
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from kannuki import _default
from kannuki._identity import record_identity
from kannuki.options import DEFAULT, check_seconds

if TYPE_CHECKING:
    from typing import ParamSpec, TypeAlias, TypeVar

    from kannuki._lock import Lock
    from kannuki._locker import Locker
    from kannuki._locker_async import AsyncLocker

    P = ParamSpec("P")
    R = TypeVar("R")
    AnyLocker: TypeAlias = Locker | AsyncLocker

__all__ = [
    "MAX_ENCODED_ARGS",
    "ON_CONFLICT",
    "LockDecorator",
    "SkipDecorator",
    "locked",
    "unique",
    "unique_key",
]

ON_CONFLICT = ("wait", "skip", "raise")

# Argument encodings longer than this are replaced by their SHA-256, so keys stay short.
MAX_ENCODED_ARGS = 200


class LockDecorator(Protocol):
    """What ``locked(...)`` / ``unique(...)`` return for ``on_conflict="wait"`` or ``"raise"``.

    The decorated function keeps its parameters and its result type (an
    ``async def`` stays a coroutine function).
    """

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


class SkipDecorator(Protocol):
    """What ``locked(...)`` / ``unique(...)`` return for ``on_conflict="skip"``: a skipped call returns None.

    A function returning ``R`` becomes one returning ``R | None``; an ``async
    def`` returning ``R`` becomes one whose coroutine returns ``R | None``.
    """

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R | None]: ...


# -- the decorators ---------------------------------------------------------------------


@overload
def locked(
    key: str | Callable[..., str],
    *,
    on_conflict: Literal["skip"],
    timeout: float | None = None,
    shared: bool = False,
    locker: AnyLocker | None = None,
) -> SkipDecorator: ...


@overload
def locked(
    key: str | Callable[..., str],
    *,
    on_conflict: Literal["wait", "raise"] = "wait",
    timeout: float | None = None,
    shared: bool = False,
    locker: AnyLocker | None = None,
) -> LockDecorator: ...


def locked(
    key: str | Callable[..., str],
    *,
    on_conflict: str = "wait",
    timeout: float | None = None,
    shared: bool = False,
    locker: AnyLocker | None = None,
) -> Any:
    """Decorate a function so that it runs holding the lock ``key``.

    ``key`` is a ``str.format`` template filled from the call's bound
    arguments, defaults applied (``"import/{import_id}"``, ``"user/{user.id}"``),
    or a callable that receives the call's arguments as passed and returns the key.

    ``on_conflict``: ``"wait"`` waits up to ``timeout`` (None: the locker's
    ``default_timeout``) and then raises LockNotAcquiredError; ``"skip"``
    returns None without calling the function; ``"raise"`` raises
    LockNotAcquiredError at once. ``locker`` None means the module default
    locker (``kannuki.configure``), looked up at each call. An
    :class:`~kannuki.AsyncLocker` decorates only ``async def`` functions.

    Example::

        @locker.locked("import/{import_id}", on_conflict="skip")
        def run_import(import_id): ...

    Raises ValueError (bad ``on_conflict``, or a template field that is not a
    parameter) and TypeError (bad ``key`` / ``timeout`` / ``shared``, or a
    plain function given to an AsyncLocker) when decorating.
    """
    _check_common(on_conflict, timeout, shared)
    if isinstance(key, str):
        if not key:
            raise ValueError("key must be a non-empty template or a callable")
        template: str | None = key
    elif callable(key):
        template = None
    else:
        raise TypeError(f"key must be a str template or a callable, not {type(key).__qualname__}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _check_callable(fn)
        make_key = _template_filler(template, fn) if template is not None else _caller(key)  # type: ignore[arg-type]
        return _wrap(fn, make_key, on_conflict, timeout, shared, locker)

    return decorate


@overload
def unique(
    *,
    on_conflict: Literal["skip"] = "skip",
    timeout: float | None = None,
    locker: AnyLocker | None = None,
) -> SkipDecorator: ...


@overload
def unique(
    *,
    on_conflict: Literal["wait", "raise"],
    timeout: float | None = None,
    locker: AnyLocker | None = None,
) -> LockDecorator: ...


def unique(
    *,
    on_conflict: str = "skip",
    timeout: float | None = None,
    locker: AnyLocker | None = None,
) -> Any:
    """Decorate a function so that only one call with the same arguments runs at a time, anywhere.

    The key is ``"<module>.<qualname>(<arguments>)"``, the arguments bound to
    the signature with defaults applied and encoded canonically (JSON with
    sorted keys; bytes, Decimal, UUID, datetime, date, time, Enum, sets,
    classes and saved database records are supported), so ``f(1, b=2)``,
    ``f(1, 2)`` and ``f(a=1, b=2)`` share a key in every process. Encodings
    over 200 characters are replaced by their SHA-256. The task instance a
    Celery ``bind=True`` task receives first is left out of the key.

    ``on_conflict`` defaults to ``"skip"`` (the duplicate returns None);
    ``"wait"`` and ``"raise"`` behave as in :func:`locked`.

    Example::

        @app.task
        @locker.unique()
        def send_report(account_id, month): ...

    Raises ValueError / TypeError for bad options when decorating, and
    TypeError naming the argument, at call time, when an argument cannot be
    encoded stably (for methods, ``self`` must be a saved record; otherwise
    use :func:`locked` with a template).
    """
    _check_common(on_conflict, timeout, False)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _check_callable(fn)
        qualname = getattr(fn, "__qualname__", None)
        if not isinstance(qualname, str):
            raise TypeError(f"unique() needs a function with a qualified name, not {fn!r}")
        signature = inspect.signature(fn)
        prefix = f"{fn.__module__}.{qualname}"

        def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return f"{prefix}({unique_key(signature, args, kwargs)})"

        return _wrap(fn, make_key, on_conflict, timeout, False, locker)

    return decorate


# -- keys -------------------------------------------------------------------------


def _template_filler(
    template: str, fn: Callable[..., Any]
) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    """Check the template's fields against ``fn``'s parameters now; fill it at each call."""
    signature = inspect.signature(fn)
    params = signature.parameters
    var_keyword = next((p.name for p in params.values() if p.kind is p.VAR_KEYWORD), None)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"key is not a valid str.format template: {template!r} ({exc})") from None
    for field in fields:
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(f"key template fields must name parameters, not {{{field}}}: {template!r}")
        if root not in params and var_keyword is None:
            raise ValueError(
                f"key template field {{{field}}} is not a parameter of {getattr(fn, '__qualname__', fn)}{signature}"
            )

    def fill(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        if var_keyword is not None:
            extra = values.pop(var_keyword)
            values = {**extra, **values}
        return template.format_map(values)

    return fill


def _caller(key: Callable[..., str]) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    """A callable key: called with the call's arguments exactly as passed."""

    def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return key(*args, **kwargs)

    return call


def unique_key(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The canonical encoding of a call's arguments (hashed when long); TypeError names an unencodable one.

    A Celery task instance passed first (a ``bind=True`` task's ``self``) is
    left out: it is the same task on every call, and has no stable encoding.
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if args and _is_celery_task(args[0]):
        first = next(iter(signature.parameters.values()))
        if first.kind is first.VAR_POSITIONAL:
            arguments[first.name] = arguments[first.name][1:]
        else:  # positional-only or positional-or-keyword: bound to args[0]
            del arguments[first.name]
    encoded = {name: _canonical(value, name) for name, value in arguments.items()}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if len(text) > MAX_ENCODED_ARGS:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def _is_celery_task(value: Any) -> bool:
    """Is ``value`` a Celery task instance (``celery.app.task.Task``), told without importing celery?"""
    return any(cls.__name__ == "Task" and cls.__module__ == "celery.app.task" for cls in type(value).__mro__)


def _canonical(value: Any, path: str) -> Any:
    """``value`` as plain JSON data that is the same in every process, or TypeError naming ``path``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):  # before int: IntEnum members are ints too
        cls = type(value)
        return {"$enum": f"{cls.__module__}.{cls.__qualname__}.{value.name}"}
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"argument {path!r} has a dict key {k!r} of type {type(k).__qualname__}; "
                    "unique() encodes only dicts with str keys"
                )
            out[k] = _canonical(item, f"{path}[{k!r}]")
        return out
    if isinstance(value, (set, frozenset)):
        items = [_canonical(item, f"{path}{{}}") for item in value]
        return {"$set": sorted(items, key=lambda item: json.dumps(item, sort_keys=True))}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, datetime.datetime):  # before date: a datetime is a date
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"$time": value.isoformat()}
    if isinstance(value, type):
        return {"$class": f"{value.__module__}.{value.__qualname__}"}
    identity = record_identity(value)
    if identity is not None:
        return {"$record": identity}
    raise TypeError(
        f"argument {path!r} of type {type(value).__qualname__} cannot be encoded stably for a unique() key; "
        "pass plain values (str, int, float, bool, None, lists, dicts, bytes, Decimal, UUID, dates, Enum) "
        "or use @locked with a key template"
    )


# -- the wrapper --------------------------------------------------------------------


def _check_common(on_conflict: Any, timeout: Any, shared: Any) -> None:
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be 'wait', 'skip' or 'raise'; got {on_conflict!r}")
    check_seconds(timeout, "timeout")
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be True or False, not {shared!r}")


def _check_callable(fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"the decorated object must be callable, not {type(fn).__qualname__}")


# Locker class -> is it an AsyncLocker (its verbs are coroutines)? Told by behaviour, not by import.
_async_kinds: dict[type, bool] = {}


def _is_async_locker(locker: Any) -> bool:
    cls = type(locker)
    kind = _async_kinds.get(cls)
    if kind is None:
        kind = _async_kinds[cls] = inspect.iscoroutinefunction(getattr(cls, "held", None))
    return kind


def _refuse_plain_function(fn: Callable[..., Any], locker: Any) -> TypeError:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return TypeError(
        f"{name} is a plain function, but {locker!r} is an AsyncLocker: it can only decorate async def functions; "
        "use a kannuki.Locker for plain functions (and Celery/RQ tasks)"
    )


def _wrap(
    fn: Callable[..., Any],
    make_key: Callable[[tuple[Any, ...], dict[str, Any]], str],
    on_conflict: str,
    timeout: float | None,
    shared: bool,
    locker: AnyLocker | None,
) -> Callable[..., Any]:
    is_coroutine = inspect.iscoroutinefunction(fn)
    if locker is not None and not is_coroutine and _is_async_locker(locker):
        raise _refuse_plain_function(fn, locker)
    wait = on_conflict == "wait"
    skip = on_conflict == "skip"
    lock_timeout = DEFAULT if timeout is None else timeout

    def make_lock(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """(the locker, a new lock on the call's key): "wait" by the lock's strategy, else one try."""
        target: Any = locker if locker is not None else _default.get_locker()
        key = make_key(args, kwargs)
        if wait:
            return target, target.lock(key, timeout=lock_timeout, shared=shared)
        return target, target.lock(key, timeout=0, shared=shared, strategy="non_blocking")

    if is_coroutine:

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            target, lock = make_lock(args, kwargs)
            if _is_async_locker(target):  # an AsyncLock: wait on this event loop
                if not await lock.acquire(blocking=wait):
                    if skip:
                        return None
                    raise await lock._not_acquired()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    await lock.release()
            if wait:  # a sync Lock: wait in a worker thread
                await _acquire_off_loop(lock)
            elif not lock.acquire(blocking=False):
                if skip:
                    return None
                raise lock._not_acquired()
            try:
                return await fn(*args, **kwargs)
            finally:
                lock.release()

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        target, lock = make_lock(args, kwargs)
        if locker is None and _is_async_locker(target):
            raise _refuse_plain_function(fn, target)
        if skip:
            if not lock.acquire(blocking=False):
                return None
            try:
                return fn(*args, **kwargs)
            finally:
                lock.release()
        with lock:  # "wait" and "raise": LockNotAcquiredError when not acquired
            return fn(*args, **kwargs)

    return wrapper


async def _acquire_off_loop(lock: Lock) -> None:
    """Acquire a sync Lock without blocking the event loop: one try here, then the wait in a thread of its own.

    Each wait gets a fresh thread, never a pooled one: the in-process table
    files a hold under the thread that took it, and a pooled thread that took
    the key for an earlier call would then "wait for itself" (a false
    DeadlockError) when it waited, untimed, for the same key for a later call.
    A fresh thread ends once it has the lock, and a hold left by a thread that
    ended is nobody's. If the awaiting task is cancelled while the thread
    waits, the thread's acquisition, whenever it comes, is released at once.
    """
    # held() asks without counting: a refused try would show up as a "failed" event.
    if not lock.held() and lock.acquire(blocking=False):
        return
    waiting: concurrent.futures.Future[bool] = concurrent.futures.Future()

    def wait_in_thread() -> None:
        if not waiting.set_running_or_notify_cancel():
            return  # cancelled before the thread started: nothing taken
        try:
            waiting.set_result(lock.acquire())
        except BaseException as exc:
            waiting.set_exception(exc)

    threading.Thread(target=wait_in_thread, name=f"kannuki-wait {lock.key!r}", daemon=True).start()
    try:
        acquired = await asyncio.wrap_future(waiting)
    except asyncio.CancelledError:
        waiting.add_done_callback(_release_if_acquired(lock))
        raise
    if not acquired:
        raise lock._not_acquired()


def _release_if_acquired(lock: Lock) -> Callable[[concurrent.futures.Future[bool]], None]:
    def release(future: concurrent.futures.Future[bool]) -> None:
        if not future.cancelled() and future.exception() is None and future.result() and lock.locked():
            lock.release()

    return release
