"""RetryPolicy, call_with_retry and RetryingClient's arguments: no server."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Dict, List
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.helpers import Interrupt

import pymc.retry
from pymc import (
    Client,
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcachePoolTimeoutError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    RetryingClient,
    RetryPolicy,
)
from pymc.client import COMMANDS
from pymc.retry import IDEMPOTENT, call_with_retry

pytestmark = pytest.mark.timeout(30)


def test_policy_is_immutable_and_increment_returns_a_new_one() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.attempts = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.attempt = 2  # type: ignore[misc]
    second = policy.increment()
    assert second is not policy
    assert (policy.attempt, second.attempt) == (1, 2)
    assert dataclasses.replace(second, attempt=1) == policy
    third = second.increment()
    assert not policy.exhausted and not second.exhausted and third.exhausted
    assert policy.attempt == 1 and second.attempt == 2  # unchanged by the increments
    assert hash(policy) == hash(RetryPolicy(attempts=3, backoff=0.1))


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.1, max_backoff=1.0, jitter=0)
    delays = []
    for _ in range(7):
        delays.append(policy.backoff_time())
        policy = policy.increment()
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert RetryPolicy(backoff=0, jitter=0.5).backoff_time() == 0


def test_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.1, max_backoff=10, jitter=0.5).increment()
    full = 0.2  # the second attempt's un-jittered delay
    with mock.patch("pymc.retry.random.random", return_value=0.0):
        assert policy.backoff_time() == pytest.approx(full)
    with mock.patch("pymc.retry.random.random", return_value=0.999999):
        assert policy.backoff_time() == pytest.approx(full * 0.5, rel=1e-5)
    samples = [policy.backoff_time() for _ in range(500)]
    assert all(full * 0.5 <= d <= full for d in samples)
    assert len(set(samples)) > 100  # really random


@given(
    backoff=st.floats(0, 5),
    max_backoff=st.floats(0, 5),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 40),
)
def test_backoff_property(backoff: float, max_backoff: float, jitter: float, attempt: int) -> None:
    policy = RetryPolicy(
        attempts=50, backoff=backoff, max_backoff=max_backoff, jitter=jitter, attempt=attempt
    )
    full = min(max_backoff, backoff * 2 ** (attempt - 1))
    delay = policy.backoff_time()
    assert (1 - jitter) * full - 1e-9 <= delay <= full + 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"attempts": 1.5},
        {"backoff": -0.1},
        {"max_backoff": -1},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"retry_for": "MemcacheError"},
        {"retry_for": (int,)},
        {"do_not_retry_for": (BaseException,)},
        {"retry_for": (MemcacheError,), "do_not_retry_for": (MemcacheError,)},
    ],
)
def test_policy_rejects_bad_arguments(kwargs: Any) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_which_failures_are_retryable() -> None:
    policy = RetryPolicy()
    connect = MemcacheConnectError(111, "refused")
    timeout = MemcacheTimeoutError(None, "timed out")
    closed = MemcacheUnexpectedCloseError("closed")
    garbled = MemcacheProtocolError("garbage")
    for command in COMMANDS:  # the server never saw it: any command
        assert policy.is_retryable(command, connect), command
    for command in ("get", "get_many", "gets", "set", "delete", "touch", "stats"):
        for exc in (timeout, closed, garbled):
            assert policy.is_retryable(command, exc), (command, exc)
    for command in ("incr", "decr", "add", "cas", "append", "prepend", "replace"):
        assert command not in IDEMPOTENT
        for exc in (timeout, closed, garbled):
            assert not policy.is_retryable(command, exc), (command, exc)
    never = [
        MemcacheIllegalInputError("bad key"),
        MemcacheClientError("CLIENT_ERROR"),
        MemcacheUnknownCommandError("ERROR"),
        MemcachePoolTimeoutError("pool"),
        MemcacheServerError("SERVER_ERROR out of memory"),
        ValueError("not ours"),
        KeyError("k"),
        Interrupt(),
        KeyboardInterrupt(),
    ]
    for other in never:
        assert not policy.is_retryable("get", other), other
    # bad input stays unretried even when asked for explicitly
    eager = RetryPolicy(retry_for=(MemcacheError,), idempotent=IDEMPOTENT | {"incr"})
    assert not eager.is_retryable("get", MemcacheIllegalInputError("bad"))
    assert not eager.is_retryable("incr", MemcacheClientError("CLIENT_ERROR"))
    assert eager.is_retryable("incr", timeout)
    # do_not_retry_for wins, even over the connect phase
    shy = RetryPolicy(do_not_retry_for=(MemcacheConnectError,))
    assert not shy.is_retryable("get", connect)
    assert shy.is_retryable("get", timeout)
    # retry_for narrows
    narrow = RetryPolicy(retry_for=(MemcacheUnexpectedCloseError,))
    assert narrow.is_retryable("get", closed)
    assert not narrow.is_retryable("get", timeout)


def test_call_with_retry_sleeps_between_attempts_and_gives_up() -> None:
    policy = RetryPolicy(attempts=4, backoff=0.1, max_backoff=0.3, jitter=0)
    calls: List[int] = []

    def always_refused() -> None:
        calls.append(1)
        raise MemcacheConnectError(111, "refused")

    with mock.patch("pymc.retry.time.sleep") as sleep, pytest.raises(MemcacheConnectError):
        call_with_retry(policy, "incr", always_refused)
    assert len(calls) == 4
    assert [c.args[0] for c in sleep.call_args_list] == pytest.approx([0.1, 0.2, 0.3])

    outcomes: List[Any] = [MemcacheConnectError(111, "x"), MemcacheConnectError(111, "y"), 42]

    def flaky(a: int, b: int = 0) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome + a + b

    with mock.patch("pymc.retry.time.sleep") as sleep:
        assert call_with_retry(policy, "incr", flaky, 1, b=2) == 45
    assert sleep.call_count == 2
    assert policy.attempt == 1  # the shared policy was not touched


@pytest.mark.parametrize(
    "exc", [Interrupt(), MemcacheIllegalInputError("bad"), MemcacheTimeoutError(None, "t")]
)
def test_call_with_retry_lets_base_exceptions_and_non_retryable_errors_through(
    exc: BaseException,
) -> None:
    calls: List[int] = []

    def fail() -> None:
        calls.append(1)
        raise exc

    with mock.patch("pymc.retry.time.sleep") as sleep, pytest.raises(type(exc)):
        call_with_retry(RetryPolicy(attempts=5), "incr", fail)
    assert calls == [1] and sleep.call_count == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": -3},
        {"retry_for": "MemcacheError"},
        {"retry_for": MemcacheError},
        {"do_not_retry_for": {"a": MemcacheError}},
        {"retry_for": [int]},
        {"do_not_retry_for": (KeyboardInterrupt,)},
        {"retry_for": [MemcacheError, IOError], "do_not_retry_for": {IOError}},
    ],
)
def test_retrying_client_checks_its_arguments_like_pymemcache(kwargs: Any) -> None:
    with pytest.raises(ValueError):
        RetryingClient(Client(("127.0.0.1", 11211)), **kwargs)


def test_retrying_client_accepts_pymemcache_arguments() -> None:
    inner = Client(("127.0.0.1", 11211))
    for retry_for in (None, (MemcacheError,), [MemcacheError], {MemcacheError}):
        RetryingClient(inner, retry_for=retry_for)
    client = RetryingClient(
        inner,
        attempts=4,
        retry_delay=0.25,
        retry_for=[MemcacheNetworkError],
        do_not_retry_for=(MemcacheIllegalInputError,),
    )
    policy = client.policy
    assert policy.attempts == 4 and policy.retry_for == (MemcacheNetworkError,)
    assert policy.do_not_retry_for == (MemcacheIllegalInputError,)
    # retry_delay is a constant pause, as in pymemcache
    assert policy.backoff_time() == policy.increment().increment().backoff_time() == 0.25


def test_retrying_client_methods_are_real_and_introspectable() -> None:
    params = inspect.signature(RetryingClient.get).parameters
    assert "key" in params and "default" in params
    assert inspect.signature(RetryingClient.get) == inspect.signature(Client.get)
    for name in COMMANDS:
        # defined on the class (or its base), not reached through __getattr__
        assert any(name in vars(cls) for cls in RetryingClient.__mro__), name
        assert inspect.isfunction(inspect.getattr_static(RetryingClient, name)), name


def test_retry_module_exports() -> None:
    assert set(pymc.retry.__all__) == {
        "IDEMPOTENT",
        "RetryPolicy",
        "RetryingClient",
        "call_with_retry",
    }


def test_call_with_retry_passes_its_own_parameter_names_through() -> None:
    def fn(**kwargs: Any) -> Dict[str, Any]:
        return kwargs

    got = call_with_retry(RetryPolicy(), "get", fn, policy=1, command=2, fn=3, args=4)
    assert got == {"policy": 1, "command": 2, "fn": 3, "args": 4}
