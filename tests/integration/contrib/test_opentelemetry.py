"""pymc.contrib.opentelemetry against real servers, spans read from the OpenTelemetry SDK's
InMemorySpanExporter: one span per command on Client, PooledClient and HashClient, with
exactly the attributes opentelemetry-instrumentation-pymemcache sets; one span per node
for a fan-out, each a child of the caller's span; errors recorded with status ERROR; no
span from a client without the hook."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc import Client, HashClient, PooledClient
from pymc.contrib.opentelemetry import PymcInstrumentor
from pymc.exceptions import MemcacheServerError


@pytest.fixture
def provider() -> Iterator[Tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def nodes(memcached_nodes: List[MemcachedProcess]) -> List[MemcachedProcess]:
    for node in memcached_nodes:
        if not node.is_running():
            node.start()
        node.flush_all()
    return memcached_nodes


def attrs(command: str, keys: str, server: Tuple[str, int]) -> Dict[str, Any]:
    """What opentelemetry-instrumentation-pymemcache sets on a pymemcache span."""
    return {
        "db.system": "memcached",
        "db.statement": f"{command} {keys}" if keys else command,
        "net.peer.name": server[0],
        "net.peer.port": server[1],
        "net.transport": "ip_tcp",
    }


def summary(spans: Sequence[ReadableSpan]) -> List[Tuple[str, Dict[str, Any]]]:
    return [(s.name, dict(s.attributes or {})) for s in spans]


@pytest.mark.parametrize("kind", ["client", "pooled"])
def test_one_span_per_command_with_pymemcache_attributes(
    memcached: MemcachedProcess,
    provider: Tuple[TracerProvider, InMemorySpanExporter],
    kind: str,
) -> None:
    tracer_provider, exporter = provider
    server = tcp(memcached)
    hook = PymcInstrumentor(tracer_provider=tracer_provider).hook()
    client: Any = (
        Client(server, on_command=hook)
        if kind == "client"
        else PooledClient(server, on_command=hook)
    )
    client.set("k1", b"v")
    assert client.get("k1") == b"v"
    assert client.get_many(["k1", b"k2"]) == {"k1": b"v"}
    assert client.set_many({"a": b"1", "b": b"2"}) == []
    assert client.incr("n", 1) is None
    assert client.delete("a") is True
    assert client.gets("k1")[0] == b"v"
    assert client.touch("k1", 10) is True
    assert client.version()
    assert client.meta_get("k1").value == b"v"
    spans = exporter.get_finished_spans()
    assert summary(spans) == [
        ("set", attrs("set", "k1", server)),
        ("get", attrs("get", "k1", server)),
        ("get_many", attrs("get_many", "k1 k2", server)),
        ("set_many", attrs("set_many", "a b", server)),
        ("incr", attrs("incr", "n", server)),
        ("delete", attrs("delete", "a", server)),
        ("gets", attrs("gets", "k1", server)),
        ("touch", attrs("touch", "k1", server)),
        ("version", attrs("version", "", server)),
        ("meta_get", attrs("meta_get", "k1", server)),
    ]
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.status.status_code is StatusCode.UNSET
        assert span.parent is None  # no span was current: each is a root
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time >= span.start_time
    client.close()


def test_spans_nest_under_the_callers_span(
    memcached: MemcachedProcess, provider: Tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = provider
    client = PooledClient(
        tcp(memcached), on_command=PymcInstrumentor(tracer_provider=tracer_provider).hook()
    )
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        client.set("x", b"1")
        client.get("x")
    *commands, outer = exporter.get_finished_spans()
    assert outer.name == "request" and [s.name for s in commands] == ["set", "get"]
    for span in commands:
        assert span.parent is not None
        assert span.parent.span_id == request.get_span_context().span_id
        assert span.context is not None
        assert span.context.trace_id == request.get_span_context().trace_id
    client.close()


def _node_keys(client: HashClient, keys: List[str]) -> Dict[Tuple[str, int], List[str]]:
    out: Dict[Tuple[str, int], List[str]] = {}
    for key in keys:
        name = client.snapshot.node_for(key)
        assert name is not None
        server = client.snapshot.servers[name]
        assert isinstance(server, tuple)
        out.setdefault(server, []).append(key)
    return out


@pytest.mark.parametrize("command", ["get_many", "set_many", "delete_many", "meta_get_many"])
def test_a_fan_out_makes_one_span_per_node_under_the_callers_span(
    nodes: List[MemcachedProcess],
    provider: Tuple[TracerProvider, InMemorySpanExporter],
    command: str,
) -> None:
    tracer_provider, exporter = provider
    servers = [tcp(n) for n in nodes[:3]]
    client = HashClient(
        servers, on_command=PymcInstrumentor(tracer_provider=tracer_provider).hook()
    )
    keys = [f"otel:{i}" for i in range(24)]
    client.set_many({k: b"v" for k in keys})
    exporter.clear()
    run: Dict[str, Callable[[], Any]] = {
        "get_many": lambda: client.get_many(keys),
        "set_many": lambda: client.set_many({k: b"w" for k in keys}),
        "delete_many": lambda: client.delete_many(keys),
        "meta_get_many": lambda: client.meta_get_many(keys),
    }
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        run[command]()
    *spans, outer = exporter.get_finished_spans()
    assert outer.name == "request"
    placed = _node_keys(client, keys)
    assert len(placed) == 3
    expected = sorted(
        (command, sorted(attrs(command, " ".join(group), server).items()))
        for server, group in placed.items()
    )
    assert sorted((n, sorted(a.items())) for n, a in summary(spans)) == expected
    parent = request.get_span_context()
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == parent.span_id
        assert span.status.status_code is StatusCode.UNSET
    client.close()


def test_an_error_is_recorded_with_status_error(
    memcached: MemcachedProcess, provider: Tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = provider
    server = tcp(memcached)
    client = Client(server, on_command=PymcInstrumentor(tracer_provider=tracer_provider).hook())
    with pytest.raises(MemcacheServerError) as raised:
        client.set("big", b"x" * (2 * 1024 * 1024))  # over the server's -I 1m
    assert client.set("small", b"ok") is True
    big, small = exporter.get_finished_spans()
    assert summary([big]) == [("set", attrs("set", "big", server))]
    assert big.status.status_code is StatusCode.ERROR
    assert big.status.description == f"MemcacheServerError: {raised.value}"
    [event] = big.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "pymc.exceptions.MemcacheServerError"
    assert event.attributes["exception.message"] == str(raised.value)
    assert small.status.status_code is StatusCode.UNSET and not small.events
    client.close()


def test_a_unix_socket_server_is_named_by_its_path(
    memcached_unix: MemcachedProcess, provider: Tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = provider
    path = memcached_unix.server
    client = Client(path, on_command=PymcInstrumentor(tracer_provider=tracer_provider).hook())
    try:
        client.set(b"bk", b"1")
        [span] = exporter.get_finished_spans()
        assert dict(span.attributes or {}) == {
            "db.system": "memcached",
            "db.statement": "set bk",
            "net.peer.name": path,
            "net.transport": "other",
        }
    finally:
        client.delete(b"bk")  # the server is the session's: leave it as it was
        client.close()


def test_nothing_is_recorded_without_the_hook(
    memcached: MemcachedProcess,
    nodes: List[MemcachedProcess],
    provider: Tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    PymcInstrumentor(tracer_provider=tracer_provider)  # made, but given to no client
    tracer = tracer_provider.get_tracer("test")
    plain: List[Any] = [
        Client(tcp(memcached)),
        PooledClient(tcp(memcached)),
        HashClient([tcp(n) for n in nodes[:3]]),
    ]
    with tracer.start_as_current_span("request"):
        for client in plain:
            client.set("quiet", b"1")
            client.get_many(["quiet", "other"])
            client.close()
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


def test_the_instrumentor_is_the_hook_too(
    memcached: MemcachedProcess, provider: Tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = provider
    client = Client(tcp(memcached), on_command=PymcInstrumentor(tracer_provider))
    client.get("k")
    assert [s.name for s in exporter.get_finished_spans()] == ["get"]
    client.close()


# ------------------------------------------------------------------ stats and semconv opt-in

LEGACY_SCHEMA = "https://opentelemetry.io/schemas/1.11.0"
DATABASE_SCHEMA = "https://opentelemetry.io/schemas/1.25.0"


def make_client(kind: str, server: Tuple[str, int], hook: Any) -> Any:
    if kind == "client":
        return Client(server, on_command=hook)
    if kind == "pooled":
        return PooledClient(server, on_command=hook)
    return HashClient([server], on_command=hook)


@pytest.mark.parametrize("kind", ["client", "pooled", "hash"])
def test_stats_with_an_argument_names_it_in_the_statement(
    memcached: MemcachedProcess,
    provider: Tuple[TracerProvider, InMemorySpanExporter],
    kind: str,
) -> None:
    tracer_provider, exporter = provider
    server = tcp(memcached)
    hook = PymcInstrumentor(tracer_provider=tracer_provider).hook()
    client = make_client(kind, server, hook)
    client.stats("slabs")
    client.stats(b"settings")
    client.stats()
    # pymemcache's instrumentation: the command, then its first argument.
    assert summary(exporter.get_finished_spans()) == [
        ("stats", attrs("stats", "slabs", server)),
        ("stats", attrs("stats", "settings", server)),
        ("stats", attrs("stats", "", server)),
    ]
    client.close()


def new_attrs(command: str, keys: str, server: Tuple[str, int]) -> Dict[str, Any]:
    """What the official database instrumentations set with
    OTEL_SEMCONV_STABILITY_OPT_IN=database: the stable attributes only."""
    return {
        "db.system.name": "memcached",
        "db.query.text": f"{command} {keys}" if keys else command,
        "server.address": server[0],
        "server.port": server[1],
        "network.transport": "tcp",
    }


@pytest.mark.parametrize(
    "opt_in, expected, schema",
    [
        (None, attrs, LEGACY_SCHEMA),
        ("", attrs, LEGACY_SCHEMA),
        ("http", attrs, LEGACY_SCHEMA),
        ("database", new_attrs, DATABASE_SCHEMA),
        ("http, database", new_attrs, DATABASE_SCHEMA),
        ("database/dup", lambda *a: {**attrs(*a), **new_attrs(*a)}, DATABASE_SCHEMA),
        ("database,database/dup", lambda *a: {**attrs(*a), **new_attrs(*a)}, DATABASE_SCHEMA),
    ],
)
@pytest.mark.parametrize("kind", ["client", "pooled", "hash"])
def test_semconv_stability_opt_in_chooses_the_attributes_and_schema(
    memcached: MemcachedProcess,
    provider: Tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
    opt_in: Any,
    expected: Callable[[str, str, Tuple[str, int]], Dict[str, Any]],
    schema: str,
    kind: str,
) -> None:
    if opt_in is None:
        monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    else:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
    tracer_provider, exporter = provider
    server = tcp(memcached)
    hook = PymcInstrumentor(tracer_provider=tracer_provider).hook()
    client = make_client(kind, server, hook)
    client.set("k1", b"v")
    client.get_many(["k1", "k2"])
    client.stats("slabs")
    spans = exporter.get_finished_spans()
    assert summary(spans) == [
        ("set", expected("set", "k1", server)),
        ("get_many", expected("get_many", "k1 k2", server)),
        ("stats", expected("stats", "slabs", server)),
    ]
    for span in spans:
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.schema_url == schema
    client.close()


@pytest.mark.parametrize(
    "opt_in, expected",
    [
        ("database", {"db.system.name", "db.query.text", "server.address", "network.transport"}),
        ("database/dup", None),
    ],
)
def test_semconv_opt_in_on_a_unix_socket(
    memcached_unix: MemcachedProcess,
    provider: Tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
    opt_in: str,
    expected: Any,
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
    tracer_provider, exporter = provider
    path = memcached_unix.server
    client = Client(path, on_command=PymcInstrumentor(tracer_provider=tracer_provider).hook())
    try:
        client.get(b"bk")
        [span] = exporter.get_finished_spans()
        new = {
            "db.system.name": "memcached",
            "db.query.text": "get bk",
            "server.address": path,
            "network.transport": "pipe",
        }
        old = {
            "db.system": "memcached",
            "db.statement": "get bk",
            "net.peer.name": path,
            "net.transport": "other",
        }
        assert dict(span.attributes or {}) == (new if expected else {**old, **new})
    finally:
        client.close()
