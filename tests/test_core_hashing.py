"""Key hashing: lookup3 / hashtextextended against pinned vectors, the live server and the twin."""

from __future__ import annotations

import random
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kannuki import _pure

try:
    from kannuki import _native
except ImportError:  # the native leg of the twin tests is skipped then
    _native = None

needs_native = pytest.mark.skipif(_native is None, reason="kannuki._native is not built")

# (key, prefix, SELECT hashtextextended('<full name>', 0)) computed on PostgreSQL 15.
# Covers lookup3's 12-byte block edges (11/12/13, 23/24/25 bytes), multi-byte
# UTF-8, keys over 1000 bytes and prefixes.
NAME_VECTORS = [
    ("a", None, 3591986179850072241),
    ("hello", None, 3449563369152288809),
    ("job:nightly-report", None, -8494718321730975779),
    ("k", "p", 2446044529698618630),
    ("orders:42", None, 583608349125624798),
    ("x", None, -474845166489675639),
    ("ab", None, 2833316173711343549),
    ("abc", None, -6747756470228489321),
    ("abcd", None, -1038429303365892052),
    ("abcde", None, 3076356108696143428),
    ("abcdefghijk", None, 3112909444737856467),
    ("abcdefghijkl", None, -7556637188122330412),
    ("abcdefghijklm", None, 8871624171452417744),
    ("abcdefghijklmnopqrstuvw", None, -1198571854151947912),
    ("abcdefghijklmnopqrstuvwx", None, -1933194731779935345),
    ("abcdefghijklmnopqrstuvwxy", None, 5649064133428767341),
    ("日本語", None, 2870829529307104068),
    ("ロック", "app", -25974321065570710),
    ("鍵", None, -4243287469645697475),
    ("🔒", None, 6537472898664833438),
    ("🔒🗝️ emoji key", None, -7192925460940606380),
    ("café", None, 2866814374384725210),
    ("naïve-résumé", None, 7144216500587265082),
    ("Ωμέγα", "greek", 770131597913631973),
    ("ключ", None, 2835016810653770112),
    ("a" * 1000, None, 1150305137314684656),
    ("xyz" * 500, None, -607419447186121649),
    ("日本" * 400, None, 3275603974673705782),
    ("1234567890" * 120, "bulk", -1171414285029195526),
    ("user:17", "tenant-a", 2771085822215020415),
    ("user:17", "tenant-b", -5803059024833908761),
    ("report", "cron", -1367929711220637725),
    (" ", None, 6600704740418937010),
    ("\t\n", None, -683612815804649995),
    ("0", None, 2234665679637250028),
    ("-1", None, -1944483416295135017),
    ("NULL", None, 5850377020046908422),
    ("'; DROP TABLE x; --", None, 2916278641755848337),
    ("a\xa0b", None, 7953342936994311991),
]

# (data, seed, SELECT hashtextextended(data, seed)): the seed perturbation.
SEEDED_VECTORS = [
    (b"", 0, -6939563903564495251),
    (b"", 1, -150071773020461347),
    (b"abc", 42, 4423357919252764502),
    (b"abcdefghijkl", -1, -3669402583748189229),
    (b"lookup3", 9223372036854775807, 8757541615099909276),
    (b"x" * 100, 123456789012345, -2212175400597377938),
]


def _name(key: str, prefix: str | None) -> str:
    return f"{prefix}:{key}" if prefix else key


def test_vectors_cover_enough() -> None:
    """The pinned table is big enough and really covers the block edges."""
    assert len(NAME_VECTORS) >= 30
    lengths = {len(_name(k, p).encode()) for k, p, _ in NAME_VECTORS}
    assert {11, 12, 13, 23, 24, 25} <= lengths
    assert max(lengths) >= 1000


@pytest.mark.parametrize(("key", "prefix", "expected"), NAME_VECTORS)
def test_lock_id_pinned_vectors(core: ModuleType, key: str, prefix: str | None, expected: int) -> None:
    """lock_id equals PostgreSQL's hashtextextended(full name, 0)."""
    assert core.lock_id(key, prefix) == expected
    assert core.hash_text_extended(_name(key, prefix).encode(), 0) == expected
    assert core.name_and_id(key, prefix) == (_name(key, prefix), expected)


@pytest.mark.parametrize(("data", "seed", "expected"), SEEDED_VECTORS)
def test_hash_text_extended_seeded_vectors(core: ModuleType, data: bytes, seed: int, expected: int) -> None:
    """Non-zero seeds perturb the state exactly as PostgreSQL does."""
    assert core.hash_text_extended(data, seed) == expected


def test_hash_accepts_bytes_like(core: ModuleType) -> None:
    """bytearray and memoryview hash like the same bytes."""
    data = "日本語のキー".encode()
    expected = core.hash_text_extended(data)
    assert core.hash_text_extended(bytearray(data)) == expected
    assert core.hash_text_extended(memoryview(data)) == expected
    assert core.hash_text_extended(b"") == core.hash_text_extended(bytearray())


def test_seed_is_taken_modulo_2_64(core: ModuleType) -> None:
    """A negative seed is the same 64 bits as its unsigned twin (SQL bigint semantics)."""
    assert core.hash_text_extended(b"abc", -1) == core.hash_text_extended(b"abc", 2**64 - 1)


def test_empty_prefix_means_no_prefix(core: ModuleType) -> None:
    """prefix "" and None give the bare key."""
    assert core.full_name("k", "") == "k"
    assert core.lock_id("k", "") == core.lock_id("k") == core.lock_id("k", None)
    assert core.full_name("k", "app") == "app:k"


def test_max_name_bytes(core: ModuleType) -> None:
    """Names up to MAX_NAME_BYTES of UTF-8 work; one byte more is refused."""
    assert core.MAX_NAME_BYTES == 65536
    assert isinstance(core.lock_id("a" * 65536), int)
    assert isinstance(core.lock_id("a" * 65532, "pfx"), int)
    with pytest.raises(ValueError, match=r"key.*65536"):
        core.lock_id("a" * 65537)
    with pytest.raises(ValueError, match=r"key.*65536"):
        core.lock_id("a" * 65533, "pfx")
    with pytest.raises(ValueError, match=r"key.*65536"):
        core.full_name("é" * 40000)  # 80000 bytes of UTF-8 although 40000 characters
    with pytest.raises(ValueError, match="key"):
        core.name_and_id("x" * (1 << 20))


BAD_KEYS = [
    (b"bytes", TypeError),
    (None, TypeError),
    (42, TypeError),
    (["k"], TypeError),
    ("", ValueError),
    ("lone \ud800 surrogate", ValueError),
]


@pytest.mark.parametrize("func", ["lock_id", "full_name", "name_and_id"])
@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
def test_bad_key(core: ModuleType, func: str, key: object, error: type[Exception]) -> None:
    """Every bad key gets TypeError / ValueError naming 'key'."""
    with pytest.raises(error, match="key"):
        getattr(core, func)(key)


@pytest.mark.parametrize("func", ["lock_id", "full_name", "name_and_id"])
@pytest.mark.parametrize(("prefix", "error"), [(b"p", TypeError), (1, TypeError), ("\udfff", ValueError)])
def test_bad_prefix(core: ModuleType, func: str, prefix: object, error: type[Exception]) -> None:
    """A bad prefix gets an error naming 'prefix'."""
    with pytest.raises(error, match="prefix"):
        getattr(core, func)("k", prefix)


@pytest.mark.parametrize(
    ("data", "seed", "error", "name"),
    [
        ("text", 0, TypeError, "data"),
        (b"x", 1.5, TypeError, "seed"),
        (b"x", "1", TypeError, "seed"),
        (b"x", 2**64, ValueError, "seed"),
        (b"x", -(2**63) - 1, ValueError, "seed"),
    ],
)
def test_bad_hash_input(
    core: ModuleType, data: object, seed: object, error: type[Exception], name: str
) -> None:
    """hash_text_extended refuses str data and seeds that are not 64-bit ints."""
    with pytest.raises(error, match=name):
        core.hash_text_extended(data, seed)


# -- the twins agree -------------------------------------------------------------------


@needs_native
@settings(max_examples=400, deadline=None)
@given(key=st.text(min_size=1), prefix=st.none() | st.text())
def test_twins_agree_on_text(key: str, prefix: str | None) -> None:
    """lock_id / full_name / name_and_id agree bit for bit, errors included."""
    results = []
    for mod in (_native, _pure):
        try:
            results.append(
                ("ok", mod.name_and_id(key, prefix), mod.lock_id(key, prefix), mod.full_name(key, prefix))
            )
        except (TypeError, ValueError) as exc:
            results.append(("error", type(exc), str(exc)))
    assert results[0] == results[1]


@needs_native
@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600), seed=st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_twins_agree_on_bytes_and_seeds(data: bytes, seed: int) -> None:
    """hash_text_extended agrees for any bytes and any 64-bit seed."""
    assert _native.hash_text_extended(data, seed) == _pure.hash_text_extended(data, seed)


# -- the live server -------------------------------------------------------------------

_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz0123456789:-_/. ",
    "abcXYZ:éüñçøß",
    "日本語のロック鍵キー",
    "🔒🗝️😀🎉👍",
    "Ωμέγαключ",
]


def _random_keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    keys = []
    for _ in range(count):
        alphabet = "".join(rng.sample(_ALPHABETS, rng.randint(1, 3)))
        length = rng.choice([rng.randint(1, 30), rng.randint(1, 300)])
        keys.append("".join(rng.choice(alphabet) for _ in range(length)))
    return keys


@pytest.mark.postgres
def test_lock_id_matches_live_postgresql(core: ModuleType, pg_conn: object) -> None:
    """3000 random keys (ASCII and not, 1..300 chars) hash like hashtextextended(k, 0) on the server."""
    keys = _random_keys(3000, seed=20240611)
    assert any(not k.isascii() for k in keys) and any(k.isascii() for k in keys)
    checked = 0
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        rows = pg_conn.execute(  # type: ignore[attr-defined]
            "SELECT hashtextextended(k, 0) FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, i) ORDER BY i",
            (batch,),
        ).fetchall()
        assert [core.lock_id(k) for k in batch] == [r[0] for r in rows]
        checked += len(rows)
    assert checked == 3000


@pytest.mark.postgres
def test_prefixed_lock_id_matches_live_postgresql(core: ModuleType, pg_conn: object) -> None:
    """With a prefix, the server hashes 'prefix:key' to the same ID."""
    keys = _random_keys(300, seed=7)
    prefixes = ["app", "日本", "tenant-42"]
    names = [f"{prefixes[i % 3]}:{k}" for i, k in enumerate(keys)]
    rows = pg_conn.execute(  # type: ignore[attr-defined]
        "SELECT hashtextextended(k, 0) FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, i) ORDER BY i",
        (names,),
    ).fetchall()
    assert [core.lock_id(k, prefixes[i % 3]) for i, k in enumerate(keys)] == [r[0] for r in rows]
