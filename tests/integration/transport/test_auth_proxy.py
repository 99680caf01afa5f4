"""ASCII auth through a proxy (twemproxy, the Debian ``nutcracker`` package) whose backends
do not all require auth.

A proxy routes each command on its own: ``set auth`` (the credentials) goes to the backend
that owns the key ``auth``, and a keyless probe such as ``version`` to whichever backend
the proxy picks. So the probe that decides whether the credentials may be sent must be
routed as the credentials are: otherwise the auth backend answers the probe and the
credentials land, as an item anyone can read, in a backend that does not require them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Tuple

import pytest
from support.helpers import tcp
from support.nutcracker import NutcrackerProcess
from support.servers import MemcachedProcess

from pymc import Client, MemcacheAuthNotRequiredError

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def mixed_backends() -> Iterator[Tuple[MemcachedProcess, MemcachedProcess]]:
    with_auth = MemcachedProcess(auth=("pymc", "s3cret-pw")).start()
    plain = MemcachedProcess().start()
    try:
        yield with_auth, plain
    finally:
        with_auth.close()
        plain.close()


def layout_splitting_auth(
    twemproxy: Callable[..., NutcrackerProcess],
    with_auth: MemcachedProcess,
    plain: MemcachedProcess,
) -> NutcrackerProcess:
    """A twemproxy over both backends that sends ``version`` to the auth backend and the
    key ``auth`` to the plain one (found by asking, whatever twemproxy's routing details)."""
    proxy: Any = None
    for names in [("a", "b"), ("b", "a"), ("n0", "n1"), ("n1", "n0"), ("x", "y"), ("y", "x")]:
        for order in ([with_auth, plain], [plain, with_auth]):
            proxy = twemproxy(
                [tcp(server) for server in order], names=names, hash="fnv1a_64", timeout_ms=2000
            )
            version = proxy.request(b"version\r\n")
            auth_key = proxy.request(b"get auth\r\n")
            if version.startswith(b"CLIENT_ERROR") and auth_key == b"END\r\n":
                break
            proxy.close()
        else:
            continue
        break
    else:
        pytest.fail("no layout routes version and the key auth to different backends")
    return proxy  # type: ignore[no-any-return]


def test_credentials_never_reach_a_backend_without_auth_through_twemproxy(
    twemproxy: Callable[..., NutcrackerProcess],
    mixed_backends: Tuple[MemcachedProcess, MemcachedProcess],
) -> None:
    with_auth, plain = mixed_backends
    proxy = layout_splitting_auth(twemproxy, with_auth, plain)
    error: Optional[Exception] = None
    client = Client(proxy.address, username="pymc", password="s3cret-pw", timeout=2.0)
    try:
        client.get("some-key")
    except Exception as exc:
        error = exc
    client.close()
    with Client(plain.address) as raw:
        assert raw.get("auth") is None, "the credentials were stored in a backend without auth"
    # The backend the credentials would go to does not require them: they were not sent.
    assert isinstance(error, MemcacheAuthNotRequiredError), repr(error)
