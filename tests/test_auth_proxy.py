"""ASCII auth through a proxy (twemproxy, the Debian ``nutcracker`` package) whose backends
do not all require auth.

A proxy routes each command on its own: ``set auth`` (the credentials) goes to the backend
that owns the key ``auth``, and a keyless probe such as ``version`` to whichever backend
the proxy picks. So the probe that decides whether the credentials may be sent must be
routed as the credentials are: otherwise the auth backend answers the probe and the
credentials land, as an item anyone can read, in a backend that does not require them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest
from support.servers import MemcachedProcess, free_port

from pymc import Client, MemcacheAuthNotRequiredError

NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.exists(NUTCRACKER), reason="nutcracker not installed"),
]


def start_nutcracker(
    tmp: Path, backends: List[Tuple[str, MemcachedProcess]]
) -> Tuple[Tuple[str, int], subprocess.Popen[bytes]]:
    """A twemproxy in front of ``backends`` (``(name, server)``, ketama over the names)."""
    port = free_port()
    servers = "".join(f"   - {b.server}:1 {name}\n" for name, b in backends)
    conf = tmp / f"nutcracker-{port}.yml"
    conf.write_text(
        "pool:\n"
        f"  listen: 127.0.0.1:{port}\n"
        "  hash: fnv1a_64\n"
        "  distribution: ketama\n"
        "  timeout: 2000\n"
        "  auto_eject_hosts: false\n"
        "  servers:\n" + servers
    )
    proc = subprocess.Popen(
        [NUTCRACKER, "-c", str(conf), "-s", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    return ("127.0.0.1", port), proc


def ask(address: Tuple[str, int], command: bytes) -> bytes:
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(command)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


@pytest.fixture
def mixed_backends() -> Iterator[Tuple[MemcachedProcess, MemcachedProcess]]:
    with_auth = MemcachedProcess(auth=("pymc", "s3cret-pw")).start()
    plain = MemcachedProcess().start()
    try:
        yield with_auth, plain
    finally:
        with_auth.close()
        plain.close()


def test_credentials_never_reach_a_backend_without_auth_through_twemproxy(
    tmp_path: Path, mixed_backends: Tuple[MemcachedProcess, MemcachedProcess]
) -> None:
    with_auth, plain = mixed_backends
    # A layout where the proxy sends ``version`` to the auth backend and the key ``auth``
    # to the plain one (found by asking, whatever twemproxy's routing details).
    for names in [("a", "b"), ("b", "a"), ("n0", "n1"), ("n1", "n0"), ("x", "y"), ("y", "x")]:
        for order in ([with_auth, plain], [plain, with_auth]):
            address, proc = start_nutcracker(tmp_path, list(zip(names, order)))
            version = ask(address, b"version\r\n")
            auth_key = ask(address, b"get auth\r\n")
            if version.startswith(b"CLIENT_ERROR") and auth_key == b"END\r\n":
                break
            proc.terminate()
            proc.wait(5)
        else:
            continue
        break
    else:
        pytest.fail("no layout routes version and the key auth to different backends")
    error: Optional[Exception] = None
    try:
        client = Client(address, username="pymc", password="s3cret-pw", timeout=2.0)
        try:
            client.get("some-key")
        except Exception as exc:
            error = exc
        client.close()
    finally:
        proc.terminate()
        proc.wait(5)
    with Client(plain.address) as raw:
        assert raw.get("auth") is None, "the credentials were stored in a backend without auth"
    # The backend the credentials would go to does not require them: they were not sent.
    assert isinstance(error, MemcacheAuthNotRequiredError), repr(error)
