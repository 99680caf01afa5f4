"""The meta commands, sans I/O (no server): every encoder's exact bytes, meta_key, and the
meta reply readers fed every reply whole, byte by byte and with trailing bytes (which must
stay buffered for the next reader); mismatched echoes poison; hypothesis fuzzes the
readers and round-trips replies built from random results."""

from __future__ import annotations

import base64
import hashlib
from typing import Callable, List, Optional, Tuple, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymc import meta
from pymc.exceptions import MemcacheIllegalInputError, MemcacheProtocolError
from pymc.meta import (
    LONG_KEY_TAG,
    RESERVED_KEY_START,
    ExpectMeta,
    ExpectMetaQuiet,
    MetaResult,
    encode_lease_get,
    encode_meta_arithmetic,
    encode_meta_delete,
    encode_meta_get,
    encode_meta_noop,
    encode_meta_set,
    lease_get_template,
    lease_key,
    meta_key,
)
from pymc.protocol import END, NEED_DATA, ErrorReply, Expect, Reader

# --------------------------------------------------------------------------- helpers


def feed_whole(expect: Expect, data: bytes, reader: Optional[Reader] = None) -> object:
    reader = reader or Reader()
    assert expect.step(reader) is NEED_DATA
    reader.feed(data)
    return expect.step(reader)


def feed_bytewise(expect: Expect, data: bytes) -> object:
    reader = Reader()
    for i in range(len(data)):
        out = expect.step(reader)
        assert out is NEED_DATA, (i, out)
        reader.feed(data[i : i + 1])
    out = expect.step(reader)
    assert out is not NEED_DATA
    assert reader.buffered == 0
    return out


def all_ways(make: Callable[[], Expect], data: bytes) -> object:
    """The result of the reader ``make()`` fed ``data`` whole, byte by byte and followed by
    trailing bytes (left buffered, then read by the plain reader): all must agree."""
    whole = feed_whole(make(), data)
    assert feed_bytewise(make(), data) == whole
    reader = Reader()
    reader.feed(data + b"END\r\nVA 1")
    assert make().step(reader) == whole
    assert reader.buffered == len(b"END\r\nVA 1")
    assert reader.next_reply() is END
    assert reader.next_line() is NEED_DATA
    return whole


def poisons(make: Callable[[], Expect], data: bytes) -> None:
    """Fed whole or byte by byte, ``data`` raises MemcacheProtocolError and poisons."""
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = Reader()
        expect = make()
        with pytest.raises(MemcacheProtocolError):
            for chunk in chunks:
                reader.feed(chunk)
                expect.step(reader)
        assert reader.broken
        with pytest.raises(MemcacheProtocolError):
            reader.feed(b"HD\r\n")
        with pytest.raises(MemcacheProtocolError):
            reader.next_line()


# --------------------------------------------------------------------------- Reader additions


class TestReaderLines:
    def test_next_line_and_block_interleave_with_next_reply(self) -> None:
        reader = Reader()
        reader.feed(b"VA 3 c1\r\nbar\r\nSTORED\r\nrest")
        assert reader.next_line() == b"VA 3 c1"
        assert reader.buffered == len(b"bar\r\nSTORED\r\nrest")
        assert reader.next_block(3) == b"bar"
        assert reader.next_reply() == b"STORED"
        assert reader.next_line() is NEED_DATA
        assert reader.buffered == 4
        reader.feed(b"\r")
        assert reader.next_line() is NEED_DATA
        reader.feed(b"\n")
        assert reader.next_line() == b"rest"
        assert reader.buffered == 0

    def test_block_in_chunks(self) -> None:
        reader = Reader()
        reader.feed(b"ab")
        assert reader.next_block(5) is NEED_DATA
        for piece in (b"c", b"de", b"\r"):
            reader.feed(piece)
            assert reader.next_block(5) is NEED_DATA
        reader.feed(b"\nX")
        assert reader.next_block(5) == b"abcde"
        assert reader.buffered == 1
        assert reader.next_block(0) is NEED_DATA
        reader.feed(b"\r\n")
        with pytest.raises(MemcacheProtocolError):
            reader.next_block(0)  # "X\r\n" is not an empty block
        assert reader.broken

    def test_block_without_crlf_poisons(self) -> None:
        reader = Reader()
        reader.feed(b"abcXY")
        with pytest.raises(MemcacheProtocolError):
            reader.next_block(3)
        with pytest.raises(MemcacheProtocolError):
            reader.next_block(3)
        with pytest.raises(MemcacheProtocolError):
            reader.next_line()

    def test_max_block(self) -> None:
        reader = Reader(max_block=4)
        reader.feed(b"abcd\r\n")
        assert reader.next_block(4) == b"abcd"
        with pytest.raises(MemcacheProtocolError):
            reader.next_block(5)
        assert reader.broken

    def test_long_line_poisons(self) -> None:
        reader = Reader()
        reader.feed(b"x" * (protocol_max() + 10))
        with pytest.raises(MemcacheProtocolError):
            reader.next_line()
        assert reader.broken
        reader = Reader()
        reader.feed(b"x" * (protocol_max() + 1) + b"\r\n")
        with pytest.raises(MemcacheProtocolError):
            reader.next_line()
        reader = Reader()
        reader.feed(b"x" * protocol_max() + b"\r\n")
        assert reader.next_line() == b"x" * protocol_max()

    def test_bad_size(self) -> None:
        with pytest.raises(ValueError):
            Reader().next_block(-1)

    def test_fail_is_public_and_poisons(self) -> None:
        reader = Reader()
        reader.feed(b"HD\r\n")
        error = reader.fail("nope")
        assert isinstance(error, MemcacheProtocolError)
        assert reader.broken and reader.buffered == 0
        with pytest.raises(MemcacheProtocolError):
            reader.next_line()


def protocol_max() -> int:
    from pymc.protocol import MAX_LINE_LENGTH

    return int(MAX_LINE_LENGTH)


# --------------------------------------------------------------------------- meta_key

B64 = base64.b64encode


class TestMetaKey:
    def test_ascii_goes_as_is(self) -> None:
        assert meta_key("foo") == (b"foo", False)
        assert meta_key(b"foo") == (b"foo", False)
        assert meta_key("foo", prefix=b"p:") == (b"p:foo", False)

    def test_unicode(self) -> None:
        with pytest.raises(MemcacheIllegalInputError):
            meta_key("caf\u00e9")
        # as the text commands send it (issue 18: one key, one item), at every length
        assert meta_key("caf\u00e9", allow_unicode=True) == ("caf\u00e9".encode(), False)
        assert meta_key("caf\u00e9", b"p:", allow_unicode=True) == (
            b"p:" + "caf\u00e9".encode(),
            False,
        )
        long = "\u00e9" * 125  # 250 bytes: base64 would be too long (a digest, before)
        assert meta_key(long, allow_unicode=True) == (long.encode(), False)
        assert meta_key(long + "x", allow_unicode=True)[1] is True
        assert meta_key("caf\u00e9 au lait", allow_unicode=True) == (
            B64("caf\u00e9 au lait".encode()),
            True,
        )

    def test_the_reserved_names_are_no_callers_key(self) -> None:
        reserved = RESERVED_KEY_START + b"lease:x"
        wire, b64 = meta_key(reserved)
        assert b64 and base64.b64decode(wire).startswith(LONG_KEY_TAG)
        assert base64.b64decode(lease_key("k")).startswith(RESERVED_KEY_START)
        assert lease_key("k") == lease_key(b"k") != lease_key("k", b"p:")
        assert lease_key("k" * 400) != lease_key("k" * 401)
        with pytest.raises(MemcacheIllegalInputError):
            meta_key("\ud800", allow_unicode=True)

    def test_spaces_and_controls(self) -> None:
        assert meta_key(b"a b") == (b"YSBi", True)
        assert meta_key("a\r\nb") == (B64(b"a\r\nb"), True)
        assert meta_key(b"\x00") == (B64(b"\x00"), True)
        assert meta_key(b"x", prefix=b"a ") == (B64(b"a x"), True)

    def test_lengths(self) -> None:
        assert meta_key(b"k" * 250) == (b"k" * 250, False)
        assert meta_key("k" * 249, prefix=b"p") == (b"p" + b"k" * 249, False)
        assert meta_key(b"k" * 186) == (b"k" * 186, False)
        assert meta_key(b" " * 186) == (B64(b" " * 186), True)
        assert len(meta_key(b" " * 186)[0]) == 248
        # Too long even in base64: the key's digest stands for it, never a refusal.
        for long_key, prefix in ((b" " * 187, b""), (b"k" * 251, b""), (b"k" * 250, b"p")):
            wire, b64 = meta_key(long_key, prefix=prefix)
            digest = hashlib.blake2b(prefix + long_key, digest_size=32).digest()
            assert (wire, b64) == (B64(LONG_KEY_TAG + digest), True)
            assert len(wire) <= 250
        assert meta_key(b"k" * 251) != meta_key(b"k" * 252)

    @pytest.mark.parametrize("bad", ["", b"", None, 1, 1.5, ["a"], bytearray(b"a")])
    def test_illegal(self, bad: object) -> None:
        with pytest.raises(MemcacheIllegalInputError):
            meta_key(bad)  # type: ignore[arg-type]

    def test_bad_prefix_type(self) -> None:
        with pytest.raises(MemcacheIllegalInputError):
            meta_key("a", prefix="p")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- encoders


class TestEncodeGet:
    @pytest.mark.parametrize(
        ("kwargs", "flags"),
        [
            ({}, b" v"),
            ({"value": False}, b""),
            ({"base64": True}, b" b v"),
            ({"return_cas": True}, b" v c"),
            ({"return_ttl": True}, b" v t"),
            ({"return_client_flags": True}, b" v f"),
            ({"return_size": True}, b" v s"),
            ({"return_hit": True}, b" v h"),
            ({"return_last_access": True}, b" v l"),
            ({"return_key": True}, b" v k"),
            ({"opaque": b"42"}, b" v O42"),
            ({"touch_ttl": 30}, b" v T30"),
            ({"touch_ttl": -1}, b" v T-1"),
            ({"vivify_on_miss": 60}, b" v N60"),
            ({"recache_ttl": 10}, b" v R10"),
            ({"no_bump": True}, b" v u"),
            ({"quiet": True}, b" v q"),
            ({"flags": "P/x"}, b" v P/x"),
            (
                {
                    "return_cas": True,
                    "return_ttl": True,
                    "return_client_flags": True,
                    "return_size": True,
                    "return_hit": True,
                    "return_last_access": True,
                    "return_key": True,
                    "opaque": b"o",
                    "quiet": True,
                    "vivify_on_miss": 1,
                    "recache_ttl": 2,
                    "touch_ttl": 3,
                    "no_bump": True,
                },
                b" v c f h k l s t Oo q N1 R2 T3 u",
            ),
        ],
    )
    def test_flags(self, kwargs: dict, flags: bytes) -> None:  # type: ignore[type-arg]
        key = b"Zm9v" if kwargs.get("base64") else b"foo"
        assert encode_meta_get(key, **kwargs) == b"mg " + key + flags + b"\r\n"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"opaque": b""},
            {"opaque": b"a b"},
            {"opaque": b"x" * 32},
            {"opaque": "str"},
            {"touch_ttl": 1 << 31},
            {"touch_ttl": "1"},
            {"touch_ttl": True},
            {"vivify_on_miss": 1.0},
            {"flags": "v\r\nflush_all"},
            {"flags": "\n"},
            {"flags": "caf\u00e9"},
            {"flags": b"v"},
        ],
    )
    def test_illegal(self, kwargs: dict) -> None:  # type: ignore[type-arg]
        with pytest.raises(MemcacheIllegalInputError):
            encode_meta_get(b"foo", **kwargs)

    def test_opaque_limit(self) -> None:
        assert encode_meta_get(b"k", opaque=b"x" * 31) == b"mg k v O" + b"x" * 31 + b"\r\n"

    @pytest.mark.parametrize(
        ("key", "b64"),
        [
            (b"", False),
            (b"a b", False),
            (b"a\r\nmn", False),
            (b"k" * 251, False),
            ("foo", False),
            (b"foo", True),  # not a multiple of 4
            (b"a!b=", True),
        ],
    )
    def test_illegal_keys(self, key: object, b64: bool) -> None:
        with pytest.raises(MemcacheIllegalInputError):
            encode_meta_get(key, base64=b64)  # type: ignore[arg-type]


@given(
    key_b64=st.sampled_from([(b"k", False), (b"a" * 250, False), (b"YWJj", True)]),
    opaque=st.sampled_from([b"1", b"ff", b"x" * 31]),
    lease_ttl=st.integers(1, (1 << 31) - 1),  # a lease lasts 1 s or more (see meta.py)
    recache_ttl=st.none() | st.integers(-(1 << 31), (1 << 31) - 1),
)
def test_the_lease_probe_is_the_meta_get_it_stands_for(
    key_b64: Tuple[bytes, bool], opaque: bytes, lease_ttl: int, recache_ttl: Optional[int]
) -> None:
    key, base64 = key_b64
    assert encode_lease_get(key, opaque, lease_ttl, recache_ttl, base64=base64) == (
        encode_meta_get(
            key,
            base64=base64,
            return_cas=True,
            return_client_flags=True,
            opaque=opaque,
            recache_ttl=recache_ttl,
        )
    )  # no vivify: a miss leads to a lease of its own (meta.lease_key)


@given(
    key_b64=st.sampled_from([(b"k", False), (b"a" * 250, False), (b"YWJj", True)]),
    opaque=st.sampled_from([b"1", b"ff", b"x" * 31]),
    lease_ttl=st.integers(1, (1 << 31) - 1),
    recache_ttl=st.none() | st.integers(-(1 << 31), (1 << 31) - 1),
)
def test_the_lease_template_around_any_opaque_is_the_lease_probe(
    key_b64: Tuple[bytes, bool], opaque: bytes, lease_ttl: int, recache_ttl: Optional[int]
) -> None:
    key, base64 = key_b64
    head, tail = lease_get_template(key, lease_ttl, recache_ttl, base64=base64)
    assert head + opaque + tail == encode_lease_get(
        key, opaque, lease_ttl, recache_ttl, base64=base64
    )


@pytest.mark.parametrize(
    "args",
    [(b"k", b"o p", 30), (b"k", b"", 30), (b"k k", b"1", 30), (b"k", b"1", 1 << 31)],
)
def test_the_lease_probe_refuses_what_meta_get_refuses(args: Tuple[bytes, bytes, int]) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        encode_lease_get(*args)


class TestEncodeSet:
    @pytest.mark.parametrize(
        ("kwargs", "flags"),
        [
            ({}, b""),
            ({"base64": True}, b" b"),
            ({"client_flags": 5}, b" F5"),
            ({"client_flags": (1 << 32) - 1}, b" F4294967295"),
            ({"ttl": 100}, b" T100"),
            ({"ttl": -1}, b" T-1"),
            ({"mode": "set"}, b""),
            ({"mode": "add"}, b" ME"),
            ({"mode": "replace"}, b" MR"),
            ({"mode": "append"}, b" MA"),
            ({"mode": "prepend"}, b" MP"),
            ({"compare_cas": 99}, b" C99"),
            ({"compare_cas": 7, "invalidate": True}, b" C7 I"),
            ({"mode": "append", "vivify_on_miss": 30}, b" MA N30"),
            ({"mode": "prepend", "vivify_on_miss": 0}, b" MP N0"),
            ({"return_cas": True}, b" c"),
            ({"return_key": True}, b" k"),
            ({"opaque": b"abc"}, b" Oabc"),
            ({"quiet": True}, b" q"),
            ({"flags": "I"}, b" I"),
            (
                {
                    "return_cas": True,
                    "return_key": True,
                    "client_flags": 1,
                    "ttl": 2,
                    "mode": "add",
                    "compare_cas": 3,
                    "opaque": b"o",
                    "quiet": True,
                },
                b" c k F1 T2 ME C3 Oo q",
            ),
        ],
    )
    def test_flags(self, kwargs: dict, flags: bytes) -> None:  # type: ignore[type-arg]
        key = b"Zm9v" if kwargs.get("base64") else b"foo"
        assert (
            encode_meta_set(key, b"bar", **kwargs) == b"ms " + key + b" 3" + flags + b"\r\nbar\r\n"
        )

    def test_empty_and_binary_data(self) -> None:
        assert encode_meta_set(b"k", b"") == b"ms k 0\r\n\r\n"
        assert encode_meta_set(b"k", b"\r\n") == b"ms k 2\r\n\r\n\r\n"
        data = cast(bytes, bytearray(b"ab"))  # bytes-like data is taken too
        assert encode_meta_set(b"k", data) == b"ms k 2\r\nab\r\n"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"mode": "cas"},
            {"mode": b"add"},
            {"invalidate": True},
            {"vivify_on_miss": 30},
            {"mode": "set", "vivify_on_miss": 30},
            {"client_flags": -1},
            {"client_flags": 1 << 32},
            {"ttl": None},
            {"compare_cas": -1},
            {"compare_cas": 1 << 64},
            {"compare_cas": "1"},
            {"flags": "x\ry"},
        ],
    )
    def test_illegal(self, kwargs: dict) -> None:  # type: ignore[type-arg]
        with pytest.raises(MemcacheIllegalInputError):
            encode_meta_set(b"foo", b"bar", **kwargs)

    def test_data_type(self) -> None:
        with pytest.raises(MemcacheIllegalInputError):
            encode_meta_set(b"foo", "bar")  # type: ignore[arg-type]


class TestEncodeDelete:
    @pytest.mark.parametrize(
        ("kwargs", "flags"),
        [
            ({}, b""),
            ({"base64": True}, b" b"),
            ({"return_key": True}, b" k"),
            ({"compare_cas": 12}, b" C12"),
            ({"invalidate": True}, b" I"),
            ({"invalidate": True, "ttl": 30}, b" I T30"),
            ({"opaque": b"9"}, b" O9"),
            ({"quiet": True}, b" q"),
            ({"flags": "x"}, b" x"),
            (
                {
                    "return_key": True,
                    "compare_cas": 1,
                    "invalidate": True,
                    "ttl": 2,
                    "opaque": b"o",
                    "quiet": True,
                },
                b" k C1 I T2 Oo q",
            ),
        ],
    )
    def test_flags(self, kwargs: dict, flags: bytes) -> None:  # type: ignore[type-arg]
        key = b"Zm9v" if kwargs.get("base64") else b"foo"
        assert encode_meta_delete(key, **kwargs) == b"md " + key + flags + b"\r\n"

    @pytest.mark.parametrize(
        "kwargs", [{"ttl": 30}, {"compare_cas": -1}, {"opaque": b"\x00"}, {"flags": "\r"}]
    )
    def test_illegal(self, kwargs: dict) -> None:  # type: ignore[type-arg]
        with pytest.raises(MemcacheIllegalInputError):
            encode_meta_delete(b"foo", **kwargs)


class TestEncodeArithmetic:
    @pytest.mark.parametrize(
        ("kwargs", "flags"),
        [
            ({}, b" v"),
            ({"return_value": False}, b""),
            ({"base64": True}, b" b v"),
            ({"decrement": True}, b" v MD"),
            ({"delta": 5}, b" v D5"),
            ({"delta": 0}, b" v D0"),
            ({"delta": (1 << 64) - 1}, b" v D18446744073709551615"),
            ({"vivify_on_miss": 0}, b" v N0"),
            ({"vivify_on_miss": 60, "initial": 10}, b" v N60 J10"),
            ({"ttl": 30}, b" v T30"),
            ({"compare_cas": 4}, b" v C4"),
            ({"return_cas": True}, b" v c"),
            ({"return_ttl": True}, b" v t"),
            ({"return_key": True}, b" v k"),
            ({"opaque": b"o"}, b" v Oo"),
            ({"quiet": True}, b" v q"),
            ({"flags": "P/x"}, b" v P/x"),
            (
                {
                    "return_cas": True,
                    "return_key": True,
                    "return_ttl": True,
                    "decrement": True,
                    "delta": 2,
                    "vivify_on_miss": 3,
                    "initial": 4,
                    "ttl": 5,
                    "compare_cas": 6,
                    "opaque": b"o",
                    "quiet": True,
                },
                b" v c k t MD D2 N3 J4 T5 C6 Oo q",
            ),
        ],
    )
    def test_flags(self, kwargs: dict, flags: bytes) -> None:  # type: ignore[type-arg]
        key = b"Zm9v" if kwargs.get("base64") else b"foo"
        assert encode_meta_arithmetic(key, **kwargs) == b"ma " + key + flags + b"\r\n"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"initial": 5},
            {"delta": -1},
            {"delta": 1 << 64},
            {"delta": True},
            {"vivify_on_miss": 0, "initial": -1},
            {"ttl": "3"},
            {"flags": "\n"},
        ],
    )
    def test_illegal(self, kwargs: dict) -> None:  # type: ignore[type-arg]
        with pytest.raises(MemcacheIllegalInputError):
            encode_meta_arithmetic(b"foo", **kwargs)


def test_noop() -> None:
    assert encode_meta_noop() == b"mn\r\n"


def test_all_names_exist() -> None:
    for name in meta.__all__:
        assert hasattr(meta, name)


# --------------------------------------------------------------------------- ExpectMeta

GET = ExpectMeta
R = MetaResult


@pytest.mark.parametrize(
    ("command", "data", "expected"),
    [
        (b"mg", b"VA 3\r\nbar\r\n", R("hit", value=b"bar")),
        (b"mg", b"VA 0\r\n\r\n", R("hit", value=b"")),
        (b"mg", b"VA 2 f5 c9\r\n\r\n\r\n", R("hit", value=b"\r\n", client_flags=5, cas=9)),
        (
            b"mg",
            b"VA 3 c1 t-1 f5 s3 h0 l1 Z X W\r\nbar\r\n",
            R(
                "hit",
                value=b"bar",
                cas=1,
                ttl=-1,
                client_flags=5,
                size=3,
                hit_before=False,
                last_access=1,
                win=True,
                stale=True,
                won_elsewhere=True,
            ),
        ),
        (b"mg", b"HD\r\n", R("hit")),
        (b"mg", b"HD h1 t30\r\n", R("hit", hit_before=True, ttl=30)),
        (b"mg", b"OK c3\r\n", R("hit", cas=3)),  # memcached 1.6.6
        (b"mg", b"EN\r\n", R("miss")),
        (b"mg", b"HD Qnew s1\r\n", R("hit", size=1)),  # an unknown flag is skipped
        (b"ms", b"HD\r\n", R("stored")),
        (b"ms", b"OK\r\n", R("stored")),
        (b"ms", b"HD c77\r\n", R("stored", cas=77)),
        (b"ms", b"NS\r\n", R("not_stored")),
        (b"ms", b"EX\r\n", R("exists")),
        (b"ms", b"NF\r\n", R("not_found")),
        (b"md", b"HD\r\n", R("deleted")),
        (b"md", b"NF\r\n", R("not_found")),
        (b"md", b"EX\r\n", R("exists")),
        (b"ma", b"VA 2 c5 t-1\r\n42\r\n", R("hit", value=b"42", number=42, cas=5, ttl=-1)),
        (b"ma", b"HD\r\n", R("hit")),
        (b"ma", b"NF\r\n", R("not_found")),
        (b"ma", b"NS\r\n", R("not_stored")),
        (b"ma", b"EX\r\n", R("exists")),
        (b"mn", b"MN\r\n", R("noop")),
        (
            b"mg",
            b"CLIENT_ERROR bad command line format\r\n",
            ErrorReply(b"CLIENT_ERROR", "bad command line format"),
        ),
        (b"ms", b"SERVER_ERROR out of memory\r\n", ErrorReply(b"SERVER_ERROR", "out of memory")),
        (b"md", b"ERROR\r\n", ErrorReply(b"ERROR", "")),
    ],
)
def test_expect_meta_replies(command: bytes, data: bytes, expected: object) -> None:
    assert all_ways(lambda: ExpectMeta(command=command), data) == expected


@pytest.mark.parametrize(
    ("reply", "vivify", "status"),
    [
        (b"VA 0 c1 f0 Z\r\n\r\n", False, "miss"),  # another caller's vivify placeholder
        (b"VA 0 c1 Z\r\n\r\n", False, "miss"),  # (flags not asked)
        (b"VA 0 c1 f0 W\r\n\r\n", True, "miss"),  # the placeholder its maker made
        (b"VA 0 c1 f0 W\r\n\r\n", False, "hit"),  # R's recache win on an empty value
        (b"VA 0 c1 f0 X Z\r\n\r\n", False, "hit"),  # stale: a value, even empty
        (b"VA 0 c1 f0 X W\r\n\r\n", True, "hit"),
        (b"VA 0 c1 f16 Z\r\n\r\n", False, "hit"),  # an empty str
        (b"VA 1 c1 f0 Z\r\nx\r\n", False, "hit"),
        (b"HD c1 Z\r\n", False, "hit"),  # (no value asked)
    ],
)
def test_the_vivify_placeholder_is_a_miss(reply: bytes, vivify: bool, status: str) -> None:
    result = all_ways(lambda: ExpectMeta(vivify=vivify), reply)
    assert isinstance(result, MetaResult) and result.status == status
    if status == "miss":
        assert result.value is None and (result.win or result.won_elsewhere)
    quiet = all_ways(lambda: ExpectMetaQuiet([(b"1",)]), reply.replace(b"c1", b"c1 O1") + b"MN\r\n")
    assert isinstance(quiet, dict) and quiet[b"1"].status == ("hit" if vivify else status)


def test_status_properties() -> None:
    assert R("hit").hit and R("hit").ok and not R("hit").miss
    assert R("miss").miss and not R("miss").ok
    assert R("stored").stored and R("deleted").deleted and R("noop").ok
    assert not R("exists").ok
    with pytest.raises(AttributeError):
        R("hit").status = "miss"  # type: ignore[misc]


def test_refused_connection_poisons_after_the_reply() -> None:
    reader = Reader()
    reader.feed(b"ERROR Too many open connections\r\nHD\r\n")
    reply = ExpectMeta().step(reader)
    assert isinstance(reply, ErrorReply) and not reply.in_step
    assert reader.broken


@pytest.mark.parametrize(
    ("command", "data"),
    [
        (b"mg", b"NS\r\n"),
        (b"mg", b"NF\r\n"),
        (b"mg", b"MN\r\n"),
        (b"ms", b"VA 1\r\nx\r\n"),
        (b"ms", b"EN\r\n"),
        (b"md", b"NS\r\n"),
        (b"md", b"VA 1\r\nx\r\n"),
        (b"ma", b"EN\r\n"),
        (b"ma", b"VA 1\r\nx\r\n"),  # not a number
        (b"ma", b"VA 20\r\n18446744073709551616\r\n"),
        (b"mn", b"HD\r\n"),
        (b"mg", b"STORED\r\n"),
        (b"mg", b"VALUE k 0 1\r\n"),
        (b"mg", b"VA\r\n"),
        (b"mg", b"VA x\r\n"),
        (b"mg", b"VA -1\r\n"),
        (b"mg", b"VA 3\r\nbarXY"),
        (b"mg", b"HD  c1\r\n"),
        (b"mg", b"HD \r\n"),
        (b"mg", b"HD cx\r\n"),
        (b"mg", b"HD c18446744073709551616\r\n"),
        (b"mg", b"HD c1 c2\r\n"),
        (b"mg", b"HD f4294967296\r\n"),
        (b"mg", b"HD t-2\r\n"),
        (b"mg", b"HD t\r\n"),
        (b"mg", b"HD h2\r\n"),
        (b"mg", b"HD Wx\r\n"),
        (b"mg", b"HD s\r\n"),
        (b"mg", b"HD Ox\r\n"),  # an opaque the request did not carry
        (b"mg", b"HD k\r\n"),
        (b"mg", b"HD kYSB b\r\n"),
        (b"mg", b"HD k!!!! b\r\n"),
        (b"mn", b"MN x\r\n"),
        (b"mg", b"CLIENT_ERRORx\r\n"),
        (b"mg", b"hd\r\n"),
    ],
)
def test_expect_meta_malformed(command: bytes, data: bytes) -> None:
    poisons(lambda: ExpectMeta(command=command), data)


class TestChecked:
    def test_opaque_echo(self) -> None:
        got = all_ways(lambda: ExpectMeta(b"7"), b"VA 1 O7\r\nx\r\n")
        assert got == R("hit", value=b"x", opaque=b"7")
        poisons(lambda: ExpectMeta(b"7"), b"VA 1 O8\r\nx\r\n")
        poisons(lambda: ExpectMeta(b"7"), b"HD\r\n")
        poisons(lambda: ExpectMeta(b"7"), b"HD c1\r\n")
        poisons(lambda: ExpectMeta(b"7", command=b"ms"), b"NS O70\r\n")

    def test_bare_failures_of_old_servers(self) -> None:
        # memcached before 1.6.10 sent EN/NF/NS/EX without flags, even to O and k.
        assert all_ways(lambda: ExpectMeta(b"7", b"foo"), b"EN\r\n") == R("miss")
        assert all_ways(lambda: ExpectMeta(b"7", command=b"md"), b"NF\r\n") == R("not_found")
        assert all_ways(lambda: ExpectMeta(b"7", command=b"ms"), b"EX\r\n") == R("exists")
        poisons(lambda: ExpectMeta(b"7", command=b"md"), b"NF Oother\r\n")

    def test_key_echo(self) -> None:
        got = all_ways(lambda: ExpectMeta(key=b"foo"), b"HD kfoo\r\n")
        assert got == R("hit", key=b"foo")
        poisons(lambda: ExpectMeta(key=b"foo"), b"HD kfoO\r\n")
        poisons(lambda: ExpectMeta(key=b"foo"), b"HD c1\r\n")
        poisons(lambda: ExpectMeta(key=b"foo"), b"VA 1 kbar\r\nx\r\n")

    def test_base64_key_echo(self) -> None:
        made = lambda: ExpectMeta(b"1", b"YSBi", True)  # noqa: E731
        got = all_ways(made, b"VA 2 kYSBi b O1\r\nhi\r\n")
        assert got == R("hit", value=b"hi", key=b"a b", opaque=b"1")
        poisons(made, b"VA 2 kYSBj b O1\r\nhi\r\n")
        poisons(made, b"VA 2 kYSBi O1\r\nhi\r\n")  # the text key "YSBi" is another key
        # memcached echoes the key of an item stored under a text key as text.
        text = lambda: ExpectMeta(key=b"Zm9v", base64=True)  # noqa: E731
        assert all_ways(text, b"HD kfoo\r\n") == R("hit", key=b"foo")

    def test_key_returned_unasked(self) -> None:
        assert all_ways(ExpectMeta, b"HD kYSBi b\r\n") == R("hit", key=b"a b")
        assert all_ways(ExpectMeta, b"HD b\r\n") == R("hit")

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError):
            ExpectMeta(command=b"get")
        with pytest.raises(MemcacheIllegalInputError):
            ExpectMeta(key=b"YSB", base64=True)


def test_max_block_applies_to_va() -> None:
    reader = Reader(max_block=2)
    reader.feed(b"VA 3\r\n")
    with pytest.raises(MemcacheProtocolError):
        ExpectMeta().step(reader)
    assert reader.broken


def test_sequential_readers_share_a_reader() -> None:
    reader = Reader()
    reader.feed(b"HD c1\r\nVA 2 O9\r\nhi\r\nEN\r\nMN\r\n")
    assert ExpectMeta(command=b"ms").step(reader) == R("stored", cas=1)
    assert ExpectMeta(b"9").step(reader) == R("hit", value=b"hi", opaque=b"9")
    assert ExpectMeta().step(reader) == R("miss")
    assert ExpectMeta(command=b"mn").step(reader) == R("noop")
    assert reader.buffered == 0


# --------------------------------------------------------------------------- ExpectMetaQuiet

SENT: List[Tuple[bytes, ...]] = [
    (b"1",),
    (b"2", b"mg"),
    (b"3", b"ms", b"apk"),
    (b"4", b"md"),
    (b"5", b"ma"),
    (b"6", b"mg", b"YSBi", b"b"),
]


class TestQuiet:
    def test_only_mn(self) -> None:
        assert all_ways(lambda: ExpectMetaQuiet(SENT), b"MN\r\n") == {}

    def test_answers(self) -> None:
        data = b"VA 1 O1\r\nx\r\nEX O3 kapk\r\nNF O4\r\nVA 2 O5\r\n10\r\nHD kYSBi b O6\r\nMN\r\n"
        assert all_ways(lambda: ExpectMetaQuiet(SENT), data) == {
            b"1": R("hit", value=b"x", opaque=b"1"),
            b"3": R("exists", opaque=b"3", key=b"apk"),
            b"4": R("not_found", opaque=b"4"),
            b"5": R("hit", value=b"10", number=10, opaque=b"5"),
            b"6": R("hit", key=b"a b", opaque=b"6"),
        }

    def test_error_lines_are_kept_and_reading_goes_on_to_mn(self) -> None:
        data = b"VA 1 O1\r\nx\r\nCLIENT_ERROR bad data chunk\r\nNF O4\r\nMN\r\n"
        got = all_ways(lambda: ExpectMetaQuiet(SENT), data)
        assert got == ErrorReply(b"CLIENT_ERROR", "bad data chunk")
        expect = ExpectMetaQuiet(SENT)
        reader = Reader()
        reader.feed(data)
        expect.step(reader)
        assert set(expect.results) == {b"1", b"4"}
        assert expect.errors == [ErrorReply(b"CLIENT_ERROR", "bad data chunk")]

    def test_refused_connection(self) -> None:
        reader = Reader()
        reader.feed(b"ERROR Too many open connections\r\n")
        reply = ExpectMetaQuiet(SENT).step(reader)
        assert isinstance(reply, ErrorReply) and not reply.in_step
        assert reader.broken

    @pytest.mark.parametrize(
        "data",
        [
            b"HD O9\r\nMN\r\n",  # never sent
            b"HD\r\nMN\r\n",  # no opaque
            b"EN\r\nMN\r\n",  # a bare miss cannot be matched
            b"VA 1 O2\r\nx\r\nVA 1 O1\r\nx\r\nMN\r\n",  # out of order
            b"VA 1 O1\r\nx\r\nVA 1 O1\r\nx\r\nMN\r\n",  # twice
            b"NS O1\r\nMN\r\n",  # no answer to mg
            b"HD O3 kother\r\nMN\r\n",  # another key
            b"HD O3\r\nMN\r\n",  # the key was asked for
            b"HD O6 kYSBi\r\nMN\r\n",  # text key, not the base64 one
            b"VA 1 O5\r\nx\r\nMN\r\n",  # ma value not a number
            b"STORED\r\nMN\r\n",
            b"MN O1\r\n",
        ],
    )
    def test_poisons(self, data: bytes) -> None:
        poisons(lambda: ExpectMetaQuiet(SENT), data)

    @pytest.mark.parametrize(
        "sent",
        [
            [(b"1",), (b"1",)],
            [()],
            [(b"1", b"get")],
            [("1",)],
            [(b"1", b"mg", b"k", b"x")],
            [(b"1", b"mg", b"k", b"b", b"")],
        ],
    )
    def test_bad_sent(self, sent: List[Tuple[bytes, ...]]) -> None:
        with pytest.raises(ValueError):
            ExpectMetaQuiet(sent)


# --------------------------------------------------------------------------- fuzzing

REPLY_LINES = [
    b"VA 3 c1 t-1\r\nbar\r\n",
    b"HD O1 kfoo\r\n",
    b"EN\r\n",
    b"MN\r\n",
    b"NS O2\r\n",
    b"CLIENT_ERROR x\r\n",
    b"VA 2 O5\r\n10\r\n",
]


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=80),
        st.lists(st.sampled_from(REPLY_LINES), max_size=4).map(b"".join),
        st.tuples(
            st.lists(st.sampled_from(REPLY_LINES), max_size=3).map(b"".join),
            st.binary(max_size=10),
            st.integers(0, 60),
        ).map(lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]),
    ),
    command=st.sampled_from([b"mg", b"ms", b"md", b"ma", b"mn"]),
    opaque=st.sampled_from([None, b"1", b"2"]),
    key=st.sampled_from([None, b"foo"]),
    split=st.integers(0, 80),
)
def test_fuzz_readers(
    data: bytes, command: bytes, opaque: Optional[bytes], key: Optional[bytes], split: int
) -> None:
    for make in (
        lambda: ExpectMeta(opaque, key, command=command),
        lambda: ExpectMetaQuiet([(b"1", b"mg", b"foo"), (b"2", b"ms"), (b"5", b"ma")]),
    ):
        reader = Reader(max_block=100)
        expect = make()
        try:
            reader.feed(data[:split])
            out = expect.step(reader)
            if out is NEED_DATA:
                reader.feed(data[split:])
                out = expect.step(reader)
        except MemcacheProtocolError:
            assert reader.broken
            continue
        assert out is NEED_DATA or isinstance(out, (MetaResult, ErrorReply, dict))


@st.composite
def replies(draw: st.DrawFn) -> Tuple[bytes, bytes, MetaResult]:
    """A random reply to a random command, and the MetaResult it must parse into."""
    command, code, status = draw(
        st.sampled_from(
            [
                (b"mg", b"VA", "hit"),
                (b"mg", b"HD", "hit"),
                (b"mg", b"OK", "hit"),
                (b"mg", b"EN", "miss"),
                (b"ms", b"HD", "stored"),
                (b"ms", b"NS", "not_stored"),
                (b"ms", b"EX", "exists"),
                (b"md", b"HD", "deleted"),
                (b"md", b"NF", "not_found"),
                (b"ma", b"VA", "hit"),
                (b"ma", b"NS", "not_stored"),
            ]
        )
    )
    fields: dict = {}  # type: ignore[type-arg]
    tokens: List[bytes] = []
    optional = {
        "cas": (st.integers(0, (1 << 64) - 1), b"c%d"),
        "ttl": (st.integers(-1, 1 << 31), b"t%d"),
        "client_flags": (st.integers(0, (1 << 32) - 1), b"f%d"),
        "size": (st.integers(0, 1 << 20), b"s%d"),
        "last_access": (st.integers(0, 1 << 31), b"l%d"),
    }
    names = draw(
        st.permutations([*optional, "hit_before", "win", "stale", "won_elsewhere", "opaque", "key"])
    )
    for name in names[: draw(st.integers(0, len(names)))]:
        if name in optional:
            strategy, fmt = optional[name]
            fields[name] = draw(strategy)
            tokens.append(fmt % fields[name])
        elif name == "hit_before":
            fields[name] = draw(st.booleans())
            tokens.append(b"h1" if fields[name] else b"h0")
        elif name in ("win", "stale", "won_elsewhere"):
            fields[name] = True
            tokens.append({"win": b"W", "stale": b"X", "won_elsewhere": b"Z"}[name])
        elif name == "opaque":
            fields[name] = draw(
                st.binary(min_size=1, max_size=31).filter(
                    lambda b: b" " not in b and b"\r\n" not in b
                )
            )
            tokens.append(b"O" + fields[name])
        else:
            raw = draw(st.binary(min_size=1, max_size=60))
            fields[name] = raw
            tokens.append(b"k" + base64.b64encode(raw))
            tokens.append(b"b")
    if code == b"VA":
        if command == b"ma":
            number = draw(st.integers(0, (1 << 64) - 1))
            value = b"%d" % number
            fields["number"] = number
        else:
            value = draw(st.binary(max_size=40))
        fields["value"] = value
        wire = b" ".join([b"VA", b"%d" % len(value), *tokens]) + b"\r\n" + value + b"\r\n"
    else:
        wire = b" ".join([code, *tokens]) + b"\r\n"
    placeholder = not fields.get("client_flags") and not fields.get("stale")
    if (
        command == b"mg"
        and fields.get("value") == b""
        and placeholder
        and "won_elsewhere" in fields
    ):
        status, fields["value"] = "miss", None  # memcached's vivify placeholder: no value
    return command, wire, MetaResult(status, **fields)


@settings(max_examples=300, deadline=None)
@given(reply=replies(), split=st.integers(0, 400))
def test_round_trip(reply: Tuple[bytes, bytes, MetaResult], split: int) -> None:
    command, wire, expected = reply
    opaque, key = expected.opaque, expected.key
    wire_key = base64.b64encode(key) if key is not None else None
    reader = Reader()
    expect = ExpectMeta(opaque, wire_key, base64=True, command=command)
    reader.feed(wire[:split])
    out = expect.step(reader)
    reader.feed(wire[split:] + b"MN\r\n")
    if out is NEED_DATA:
        out = expect.step(reader)
    assert out == expected
    assert reader.next_line() == b"MN"
