"""Scoped record locks: ``scoped_lock`` attributes and ``record_lock`` on plain, SQLAlchemy and Django records."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kannuki
from kannuki import _default as default_module
from kannuki.records import RecordLock, record_lock, scoped_lock


@pytest.fixture
def locker() -> Iterator[kannuki.Locker]:
    """A memory locker on a table of its own."""
    loc = kannuki.Locker(f"memory://rec-{uuid.uuid4().hex[:8]}")
    yield loc
    loc.close()


def make_invoice_class(locker: kannuki.Locker | None) -> type:
    class Invoice:
        __tablename__ = "invoices"
        number_generation = scoped_lock(scope="company_id", locker=locker)
        recalculation = scoped_lock(locker=locker, timeout=0.05)

        def __init__(self, id: int | None, company_id: int | None) -> None:
            self.id = id
            self.company_id = company_id

    return Invoice


# -- plain classes -------------------------------------------------------------------


def test_keys_from_scope_primary_key_and_attribute_name(locker: kannuki.Locker) -> None:
    """scope value or id, then the attribute's name: invoices/42/number_generation, invoices/7/recalculation."""
    Invoice = make_invoice_class(locker)
    invoice = Invoice(id=7, company_id=42)
    assert isinstance(invoice.number_generation, RecordLock)
    assert invoice.number_generation.key == "invoices/42/number_generation"
    assert invoice.recalculation.key == "invoices/7/recalculation"
    assert record_lock(invoice, "custom_operation", locker=locker).key == "invoices/7/custom_operation"
    assert Invoice.number_generation.name == "number_generation"  # class access gives the descriptor


def test_namespace_rules() -> None:
    """__kannuki_namespace__ beats __tablename__ beats _meta.db_table beats the lower-cased class name."""

    class Meta:
        db_table = "shop_order"

    class Plain:
        id = 1

    class WithMeta(Plain):
        _meta = Meta

    class WithTable(WithMeta):
        __tablename__ = "orders"

    class Explicit(WithTable):
        __kannuki_namespace__ = "billing/orders"

    assert [record_lock(cls(), "op").key for cls in (Plain, WithMeta, WithTable, Explicit)] == [
        "plain/1/op",
        "shop_order/1/op",
        "orders/1/op",
        "billing/orders/1/op",
    ]


def test_unsaved_records_raise_value_error_naming_the_attribute(locker: kannuki.Locker) -> None:
    """A None scope or primary key is a ValueError naming it, never a lock on invoices/None/..."""
    Invoice = make_invoice_class(locker)
    with pytest.raises(ValueError, match=r"Invoice\.company_id"):
        Invoice(id=7, company_id=None).number_generation.lock()
    with pytest.raises(ValueError, match=r"Invoice\.id"):
        Invoice(id=None, company_id=42).recalculation.with_lock(print)
    with pytest.raises(ValueError, match=r"Invoice\.id"):
        record_lock(Invoice(id=None, company_id=1), "op", locker=locker)
    assert locker.backend.list_held() == []


def test_bad_arguments(locker: kannuki.Locker) -> None:
    """Bad scope, name, options and records without a primary key are refused naming the problem."""
    with pytest.raises(TypeError, match="scope"):
        scoped_lock(scope="")
    with pytest.raises(ValueError, match="timeout"):
        scoped_lock(timeout=-1)
    with pytest.raises(TypeError, match="shared"):
        scoped_lock(shared=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        record_lock(make_invoice_class(locker)(1, 1), "")
    with pytest.raises(TypeError, match="'colour'"):
        record_lock(make_invoice_class(locker)(1, 1), "op", colour="red")
    with pytest.raises(TypeError, match="primary key"):
        record_lock(object(), "op")


def test_verbs_match_the_lockers(locker: kannuki.Locker) -> None:
    """with_lock / try_lock / lock_or_raise / held / lock behave like the locker's verbs on the key."""
    Invoice = make_invoice_class(locker)
    invoice = Invoice(id=7, company_id=42)
    rl = invoice.number_generation
    assert rl.with_lock(lambda x, y=0: x + y, 1, y=2) == 3
    assert rl.try_lock(lambda: locker.held("invoices/42/number_generation")) is True
    assert rl.lock_or_raise(lambda: "ok", timeout=1) == "ok"
    other = Invoice(id=8, company_id=42)  # same company: same lock
    with rl.lock():
        assert rl.held() and other.number_generation.held()
        assert other.number_generation.try_lock(print) is False
        assert other.number_generation.with_lock(print, timeout=0.01) is False
        with pytest.raises(kannuki.LockNotAcquiredError):
            other.number_generation.lock_or_raise(print, timeout=0.01)
        assert not Invoice(id=9, company_id=43).number_generation.held()
    assert not rl.held()
    assert locker.stats().timeouts == 2


def test_attribute_options_are_defaults_of_its_locks(locker: kannuki.Locker) -> None:
    """scoped_lock(timeout=, shared=) and record_lock(**options) become the lock's defaults; lock() overrides."""
    Invoice = make_invoice_class(locker)
    invoice = Invoice(id=7, company_id=42)
    assert invoice.recalculation.lock().timeout == 0.05
    assert invoice.recalculation.lock(timeout=3).timeout == 3
    assert invoice.number_generation.lock().timeout is None  # the locker's default_timeout
    reader = record_lock(invoice, "report", locker=locker, shared=True, timeout=1)
    lock = reader.lock()
    assert lock.shared and lock.timeout == 1
    with lock:
        assert reader.try_lock(lambda: "shared too") == "shared too"


def test_default_locker_looked_up_at_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without locker=, the module default locker is used, found at use time."""
    monkeypatch.setattr(default_module, "_default", None)
    invoice = make_invoice_class(None)(id=1, company_id=2)
    rl = invoice.number_generation
    with pytest.raises(kannuki.ConfigurationError):
        rl.held()
    configured = kannuki.configure(f"memory://rec-{uuid.uuid4().hex[:8]}")
    with rl.lock():
        assert configured.held("invoices/2/number_generation")


def test_excludes_across_threads(locker: kannuki.Locker) -> None:
    """Two threads using the same record's lock never overlap."""
    Invoice = make_invoice_class(locker)
    inside, overlaps = [], []

    def work() -> None:
        for _ in range(50):

            def critical() -> None:
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                inside.pop()

            Invoice(id=1, company_id=5).number_generation.with_lock(critical, timeout=10)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == [] and not any(t.is_alive() for t in threads)


def test_identity_helpers_importable_from_records() -> None:
    """namespace / primary_key_value / record_identity live in kannuki._identity and stay importable here."""
    from kannuki import _identity, records

    for name in ("namespace", "primary_key_value", "record_identity"):
        assert getattr(records, name) is getattr(_identity, name)

    class Account:
        __kannuki_namespace__ = "accounts"

        def __init__(self, id: int) -> None:
            self.id = id

    assert records.record_identity(Account(3)) == "accounts/3"
    assert records.record_identity(object()) is None
    assert records.namespace(Account) == "accounts" and records.primary_key_value(Account(4)) == 4


def test_async_locker_record_lock_is_an_async_lock_and_the_sync_verbs_refuse() -> None:
    """With an AsyncLocker, lock() gives an AsyncLock for ``async with``; the sync verbs raise TypeError."""
    import asyncio

    alocker = kannuki.AsyncLocker(f"memory://rec-{uuid.uuid4().hex[:8]}")
    invoice = make_invoice_class(alocker)(id=7, company_id=42)  # type: ignore[arg-type]
    rl = invoice.number_generation
    for verb in (
        lambda: rl.with_lock(print),
        lambda: rl.try_lock(print),
        lambda: rl.lock_or_raise(print),
        rl.held,
    ):
        with pytest.raises(TypeError, match=r"AsyncLocker.*async with"):
            verb()

    async def main() -> None:
        async with rl.lock() as lock:
            assert isinstance(lock, kannuki.AsyncLock)
            assert await alocker.held("invoices/42/number_generation")
        assert not await alocker.held("invoices/42/number_generation")
        await alocker.aclose()

    asyncio.run(main())


# -- SQLAlchemy ---------------------------------------------------------------------


def sqlalchemy_models(table: str) -> tuple[Any, type, type]:
    sa = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class Base(DeclarativeBase):
        pass

    class Invoice(Base):
        __tablename__ = table
        id = mapped_column(sa.Integer, primary_key=True)
        company_id = mapped_column(sa.Integer, nullable=False)
        number_generation = scoped_lock(scope="company_id")
        recalculation = scoped_lock()

    class Line(Base):  # composite primary key, with the key attribute named unlike the column
        __tablename__ = table + "_lines"
        invoice_no = mapped_column("invoice", sa.Integer, primary_key=True, autoincrement=False)
        position = mapped_column(sa.Integer, primary_key=True, autoincrement=False)

    return sa, Base, (Invoice, Line)  # type: ignore[return-value]


def check_sqlalchemy(url: str, locker_url: str) -> None:
    table = f"kannuki_invoices_{uuid.uuid4().hex[:8]}"
    sa, Base, (Invoice, Line) = sqlalchemy_models(table)
    from sqlalchemy.orm import Session

    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    try:
        kannuki_locker = kannuki.Locker(locker_url)
        with Session(engine) as session:
            invoice = Invoice(company_id=42)
            with pytest.raises(ValueError, match=r"Invoice\.id"):
                invoice.recalculation
            session.add_all([invoice, Line(invoice_no=3, position=4)])
            session.commit()
            assert invoice.number_generation.key == f"{table}/42/number_generation"
            assert invoice.recalculation.key == f"{table}/{invoice.id}/recalculation"
            line = session.scalars(sa.select(Line)).one()
            assert record_lock(line, "op").key == f"{table}_lines/3,4/op"
            with pytest.raises(ValueError, match=r"Line\.invoice_no"):
                record_lock(Line(position=1), "op")
            rl = record_lock(invoice, "custom_operation", locker=kannuki_locker)
            assert rl.with_lock(rl.held) is True
        kannuki_locker.close()
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_sqlalchemy_model_on_sqlite(tmp_path: Path) -> None:
    """A declarative model on sqlite: __tablename__ namespace, mapper primary keys (composite too)."""
    check_sqlalchemy(f"sqlite:///{tmp_path / 'records.db'}", f"memory://rec-{uuid.uuid4().hex[:8]}")


@pytest.mark.postgres
def test_sqlalchemy_model_on_postgresql(pg_url: str) -> None:
    """The same model on PostgreSQL, locking through the PostgreSQL backend."""
    pytest.importorskip("psycopg")
    sa_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    check_sqlalchemy(sa_url, pg_url)


# -- Django (in a subprocess: django.setup() is process-wide) ------------------------

DJANGO_SCRIPT = """
import django, uuid
from django.conf import settings
settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB_PATH}},
    INSTALLED_APPS=[], USE_TZ=True,
)
django.setup()
from django.db import connection, models
import kannuki
from kannuki.records import record_lock, scoped_lock

class Invoice(models.Model):
    company_id = models.IntegerField()
    number_generation = scoped_lock(scope="company_id")
    recalculation = scoped_lock()
    class Meta:
        app_label = "billing"
        db_table = "billing_invoices"

class Customer(models.Model):
    code = models.CharField(max_length=10, primary_key=True)
    class Meta:
        app_label = "billing"

with connection.schema_editor() as editor:
    editor.create_model(Invoice)
    editor.create_model(Customer)

kannuki.configure("memory://")
unsaved = Invoice(company_id=42)
try:
    unsaved.recalculation
except ValueError as exc:
    assert "Invoice.id" in str(exc), exc
else:
    raise AssertionError("no ValueError for an unsaved record")
invoice = Invoice.objects.create(company_id=42)
assert invoice.number_generation.key == "billing_invoices/42/number_generation"
assert invoice.recalculation.key == f"billing_invoices/{invoice.pk}/recalculation"
assert record_lock(Customer.objects.create(code="acme"), "sync").key == "billing_customer/acme/sync"
assert invoice.recalculation.with_lock(lambda: invoice.recalculation.held()) is True
print("django ok")
"""


def test_django_model(tmp_path: Path) -> None:
    """A real Django model with sqlite, settings configured in a fresh interpreter: pk and _meta.db_table."""
    pytest.importorskip("django")
    script = "DB_PATH = " + repr(str(tmp_path / "django.sqlite3")) + "\n" + textwrap.dedent(DJANGO_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONWARNINGS": "error"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=90
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django ok"
