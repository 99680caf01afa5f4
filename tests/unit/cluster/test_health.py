"""The health rules of HashClient that need no server: the resting error, the retry of a close."""

from __future__ import annotations

import pymc
import pymc.exceptions
from pymc import (
    MemcacheNetworkError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
)
from pymc.exceptions import MemcacheUnsupportedCommandError


def test_the_resting_error_is_public_and_documented() -> None:
    from pymc.exceptions import NodeRestingError

    assert issubclass(NodeRestingError, MemcacheNetworkError)
    assert NodeRestingError.__doc__
    with open(pymc.__file__.replace("pymc/__init__.py", "README.md"), encoding="utf-8") as f:
        assert "NodeRestingError" in f.read()


def test_a_retry_policy_retries_the_close_as_it_did() -> None:
    """A close before any reply may also have been a connection the server had just closed:
    a RetryPolicy retries it for an idempotent command as the close it was, and never an
    ``ERROR`` reply (pure logic)."""
    policy = pymc.RetryPolicy(attempts=3)
    refused = pymc.client.refused_by_close(b"gat 10 key\r\n", closed_before_reply(), "x:1")
    assert isinstance(refused, MemcacheUnsupportedCommandError), refused
    assert "gat" in str(refused) and policy.is_retryable("gat", refused)
    assert not policy.is_retryable("meta_arithmetic", refused)
    assert not policy.is_retryable("gat", MemcacheUnknownCommandError("ERROR"))
    # a close in answer to a command every server supports stays the close it was
    common = closed_before_reply()
    assert pymc.client.refused_by_close(b"get key\r\n", common, "127.0.0.1:1") is common
    # and so does one that came after part of the reply
    late = MemcacheUnexpectedCloseError("closed mid-reply")
    assert pymc.client.refused_by_close(b"mg key v\r\n", late, "127.0.0.1:1") is late


def closed_before_reply() -> MemcacheUnexpectedCloseError:
    error = MemcacheUnexpectedCloseError("closed")
    error.before_reply = True
    return error
