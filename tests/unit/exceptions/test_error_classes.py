"""The drop-in error classes: how socket errors combine with pymemcache's classes."""

from __future__ import annotations

import errno
import pickle
import socket
import ssl
from typing import Type

import pytest

from pymc import (
    MemcacheConnectError,
    MemcacheNetworkError,
)
from pymc.exceptions import network_error

SOCKET_ERRORS = [
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    FileNotFoundError,
    PermissionError,
    InterruptedError,
    socket.gaierror,
    socket.herror,
    ssl.SSLError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ssl.SSLSyscallError,
    ssl.SSLWantReadError,
    ssl.SSLCertVerificationError,
]


@pytest.mark.parametrize("original", SOCKET_ERRORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("pymc_class", [MemcacheNetworkError, MemcacheConnectError])
def test_every_socket_error_class_combines(
    original: Type[OSError], pymc_class: Type[MemcacheNetworkError]
) -> None:
    exc = original(errno.EIO, "boom")
    made = network_error(pymc_class, exc, "cannot connect: boom")
    assert isinstance(made, original) and isinstance(made, pymc_class)
    assert type(made).__name__ == f"{pymc_class.__name__}[{original.__name__}]"
    assert (made.errno, made.strerror, made.args) == (errno.EIO, "cannot connect: boom", made.args)
    assert made.args == (errno.EIO, "cannot connect: boom")
    assert type(network_error(pymc_class, exc, "again")) is type(made)  # made once
    assert type(pickle.loads(pickle.dumps(made))) is type(made)


def test_plain_oserror_and_foreign_classes_stay_pymcs_alone() -> None:
    plain = network_error(MemcacheNetworkError, OSError(errno.EIO, "x"), "m")
    assert type(plain) is MemcacheNetworkError

    class Fussy(OSError):
        def __init__(self, required: str, also: str, more: str) -> None:
            super().__init__(required)

    made = network_error(MemcacheConnectError, Fussy("a", "b", "c"), "m")
    assert type(made) is MemcacheConnectError  # cannot be built as both: pymc's alone
