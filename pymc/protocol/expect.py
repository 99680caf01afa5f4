"""What replies mean, decided once: :data:`RULES` (for each command, the replies it may get and
what each means) and the ``Expect*`` readers every client and the fan-out read replies with;
the resync marker's reader (:class:`ExpectSync`) and the auth probe's.
"""

from __future__ import annotations

from typing import (
    Collection,
    Dict,
    Final,
    List,
    Optional,
    Tuple,
)

from ..exceptions import (
    MemcacheProtocolError,
)
from .keys import (
    LEGACY_CONFIG_KEY,
)
from .reader import (
    Reader,
)
from .replies import (
    DELETED,
    END,
    EXISTS,
    NEED_DATA,
    NOT_FOUND,
    NOT_STORED,
    OK,
    RESET,
    STORED,
    TOUCHED,
    ClusterConfig,
    ErrorReply,
    Reply,
    Stat,
    Value,
    Version,
    is_error_line,
    parse_cluster_config,
)
from .requests import (
    AUTH_KEY,
)

# --------------------------------------------------------------------------- what replies mean
#
# One table says, for every command, which replies it may get and what each means. A reply
# outside that set is a protocol error (the reader is poisoned, so the connection is
# dropped); an ErrorReply is always accepted, since the server is still in step, and is
# turned into its exception by ``Rule.result``. Every client, and the cluster fan-out,
# reads replies through the ``Expect*`` readers below and interprets them through these
# rules, so the decision is made once.


class Rule:
    """What one command may get back, and what each reply means."""

    __slots__ = ("command", "kinds", "meanings")

    def __init__(
        self, command: str, meanings: Dict[bytes, object], kinds: Tuple[type, ...] = ()
    ) -> None:
        self.command = command
        self.meanings = meanings  # fixed word -> the command's result
        self.kinds = kinds  # reply types accepted as they are (an int, a Version)

    def accepts(self, reply: object) -> bool:
        return reply in self.meanings or type(reply) in self.kinds or type(reply) is ErrorReply

    def result(self, reply: object) -> object:
        """The command's result for an accepted reply; an ErrorReply raises."""
        if type(reply) is ErrorReply:
            raise reply.exception(self.command)
        if isinstance(reply, Version):
            return reply.version
        if type(reply) in self.kinds:
            return reply
        return self.meanings[reply]  # type: ignore[index]

    def __repr__(self) -> str:
        return f"<Rule {self.command}>"


def _stored(command: str) -> Rule:
    return Rule(command, {STORED: True, NOT_STORED: False})


#: command name -> its Rule (the storage commands, ``cas``, ``delete``, ``touch``, ``incr``,
#: ``decr`` and the administrative ones that answer ``OK``).
RULES: Dict[str, Rule] = {
    "set": _stored("set"),
    "add": _stored("add"),
    "replace": _stored("replace"),
    "append": _stored("append"),
    "prepend": _stored("prepend"),
    "cas": Rule("cas", {STORED: True, EXISTS: False, NOT_FOUND: None}),
    "delete": Rule("delete", {DELETED: True, NOT_FOUND: False}),
    "touch": Rule("touch", {TOUCHED: True, NOT_FOUND: False}),
    "incr": Rule("incr", {NOT_FOUND: None}, (int,)),
    "decr": Rule("decr", {NOT_FOUND: None}, (int,)),
    "flush_all": Rule("flush_all", {OK: True}),
    "verbosity": Rule("verbosity", {OK: True}),
    "cache_memlimit": Rule("cache_memlimit", {OK: True}),
    "version": Rule("version", {}, (Version,)),
    "auth": Rule("auth", {STORED: True}),
    "shutdown": Rule("shutdown", {OK: None}),
}


def closes_after(reply: ErrorReply, keys: int) -> bool:
    """Whether the connection is unusable after ``reply``, the answer to a retrieval
    (``get``/``gets``/``gat``/``gats``) of ``keys`` keys: a ``SERVER_ERROR`` to one of
    more than one key. twemproxy splits such a request into one per backend; when one of
    them fails (a backend down or timing out) it answers ``SERVER_ERROR`` and then closes
    the client's connection, maybe after the client sent its next command, which is then
    lost unanswered (a noreply write lost without a sign). The connection is therefore
    closed at once (the reply's ``in_step`` is False), as after ``ERROR Too many open
    connections``. twemproxy closes on nothing else it answers with an error (one key's
    retrieval, the storage commands, ``delete``, ``incr``, ``touch``, ``version``); from
    memcached itself, such an answer is rare enough that a new connection costs nothing."""
    return keys > 1 and reply.kind == b"SERVER_ERROR"


class Expect:
    """Reads the reply to one request from a :class:`Reader`: ``step(reader)`` returns the
    finished result, or :data:`NEED_DATA` (call it again after feeding more bytes). A
    reply the request cannot have is a protocol error that poisons the reader."""

    __slots__ = ()

    def step(self, reader: Reader) -> object:  # pragma: no cover - abstract
        raise NotImplementedError


class ExpectReplies(Expect):
    """``count`` one-line replies, each one ``rule`` accepts: a list of them."""

    __slots__ = ("count", "replies", "rule")

    def __init__(self, rule: Rule, count: int = 1) -> None:
        self.rule = rule
        self.count = count
        self.replies: List[Reply] = []

    def step(self, reader: Reader) -> object:
        replies = self.replies
        accepts = self.rule.accepts
        while len(replies) < self.count:
            reply = reader.next_reply()
            if reply is NEED_DATA:
                return NEED_DATA
            if not accepts(reply):
                raise reader.fail(f"unexpected reply to {self.rule.command}: {reply!r}"[:300])
            replies.append(reply)  # type: ignore[arg-type]
            if type(reply) is ErrorReply and not reply.in_step:
                # The server refused the connection: nothing more will come, and this is
                # the answer to every command still unanswered.
                replies.extend([reply] * (self.count - len(replies)))
        return replies


class ExpectValues(Expect):
    """The answer to one ``get``/``gets``/``gat``/``gats``: the items go into ``found``
    (``raw key: (flags, data, cas)``); the result is ``found``, or an :class:`ErrorReply`.

    ``wanted`` holds the keys of *this* request; ``found`` may be shared by the passes of a
    large multi-get, so a key answered twice, in any pass, is a protocol error. With
    ``cas`` every value must carry its cas token.
    """

    __slots__ = ("cas", "found", "wanted")

    def __init__(
        self,
        wanted: Collection[bytes],
        found: Optional[Dict[bytes, Tuple[int, bytes, Optional[bytes]]]] = None,
        cas: bool = False,
    ) -> None:
        self.wanted = wanted
        self.found: Dict[bytes, Tuple[int, bytes, Optional[bytes]]] = {} if found is None else found
        self.cas = cas

    def step(self, reader: Reader) -> object:
        if not reader.buffered:
            return NEED_DATA  # (the common first call, before anything was received)
        before = len(self.found)
        status = reader.read_values(self.wanted, self.found)
        if status is NEED_DATA:
            return NEED_DATA
        if type(status) is ErrorReply:
            if len(self.found) != before:
                raise reader.fail(f"an error in the middle of a retrieval: {status!r}")
            if closes_after(status, len(self.wanted)):
                return ErrorReply(status.kind, status.message, True)
            return status
        if self.cas:
            for raw, item in self.found.items():
                if item[2] is None:
                    raise reader.fail(f"a value without its cas token: {raw!r}")
        return self.found


class ExpectStats(Expect):
    """A ``stats`` block: ``{name: value}`` up to ``END``; ``{}`` for the sub-commands that
    answer ``OK`` or ``RESET``; or an :class:`ErrorReply`."""

    __slots__ = ("stats",)

    def __init__(self) -> None:
        self.stats: Dict[bytes, bytes] = {}

    def step(self, reader: Reader) -> object:
        stats = self.stats
        while True:
            reply = reader.next_reply()
            if reply is NEED_DATA:
                return NEED_DATA
            if type(reply) is Stat:
                stats[reply.name] = reply.value
            elif reply is END or ((reply is OK or reply is RESET) and not stats):
                return stats
            elif type(reply) is ErrorReply and not stats:
                return reply
            else:
                raise reader.fail(f"unexpected reply to stats: {reply!r}"[:300])


class ExpectConfig(Expect):
    """``CONFIG cluster`` and its ``END``: a :class:`ClusterConfig`, or an ErrorReply."""

    __slots__ = ("config",)

    def __init__(self) -> None:
        self.config: Optional[ClusterConfig] = None

    def step(self, reader: Reader) -> object:
        if self.config is None:
            reply = reader.next_reply()
            if reply is NEED_DATA or type(reply) is ErrorReply:
                return reply
            if type(reply) is not ClusterConfig:
                raise reader.fail(f"unexpected reply to config get: {reply!r}"[:300])
            self.config = reply
        end = reader.next_reply()
        if end is NEED_DATA:
            return NEED_DATA
        if end is not END:
            raise reader.fail("a CONFIG block not followed by END")
        return self.config


class ExpectLegacyConfig(Expect):
    """The answer to :func:`encode_legacy_config_get` (engines older than 1.4.14): the
    ``AmazonElastiCache:cluster`` value parsed into a :class:`ClusterConfig`; None when the
    key is missing (a plain memcached: just ``END``); or an ErrorReply. A value for another
    key, a second value, or a payload that does not parse is a protocol error."""

    __slots__ = ("config",)

    def __init__(self) -> None:
        self.config: Optional[ClusterConfig] = None

    def step(self, reader: Reader) -> object:
        if self.config is None:
            reply = reader.next_reply()
            if reply is NEED_DATA or reply is END or type(reply) is ErrorReply:
                return None if reply is END else reply
            if type(reply) is not Value:
                raise reader.fail(f"unexpected reply to the config get: {reply!r}"[:300])
            if reply.key != LEGACY_CONFIG_KEY:
                raise reader.fail(f"the server answered {reply.key[:100]!r}, not the config")
            try:
                self.config = parse_cluster_config(reply.data)
            except MemcacheProtocolError as exc:
                raise reader.fail(str(exc)) from None
        end = reader.next_reply()
        if end is NEED_DATA:
            return NEED_DATA
        if end is not END:
            raise reader.fail(f"the config value not followed by END: {end!r}"[:300])
        return self.config


class ExpectRaw(Expect):
    """Everything up to ``token`` (consumed, not returned), for ``raw_command``."""

    __slots__ = ("token",)

    def __init__(self, token: bytes) -> None:
        self.token = token

    def step(self, reader: Reader) -> object:
        return reader.read_until(self.token)


#: How many error lines in a row the sync marker's reader looks through to find what follows.
_SYNC_LOOKAHEAD: Final = 64


class ExpectSync(Expect):
    """Everything up to and including the answer to the sync marker (:func:`encode_sync`,
    ``version``) that a connection sends ahead of its next request after ``noreply``
    commands. The result is that answer.

    Before the answer come only the error lines (if any) that the noreply commands drew:
    they are collected in ``errors``, never raised. The answer is a ``VERSION`` line from
    memcached and from proxies that answer ``version`` themselves (mcrouter). A proxy that
    relays ``version`` to one backend (twemproxy) answers it with an error line when that
    backend is down; such a proxy drops whatever its backends answer to noreply commands,
    so no error line of theirs comes before it. An error line is therefore told apart by
    what follows it (looked at, not consumed):

    * ``VERSION``: the error was a noreply command's; the marker's answer follows.
    * a reply that is no error line: that is the next request's reply, so the error was
      the marker's own answer (returned; the connection is in step).
    * another error line, then nothing decisive buffered (``follows``: a request was sent
      behind the marker): either both are noreply errors and ``VERSION`` is still to come,
      or the second is the next request's own error, as from a proxy whose backends are
      down. Waiting could be forever, so neither is assumed: ``unsure`` is set, the second
      line is consumed into ``taken`` (the caller raises it and closes the connection, so
      a late ``VERSION`` can never answer a later request).
    * nothing more, when no request follows the marker (``follows=False``): the same
      doubt, decided the same way (``unsure``; the caller closes the connection).

    A reply that is neither an error line nor ``VERSION`` before the answer is a protocol
    error. ``ERROR Too many open connections`` (not in step) is returned at once.
    """

    __slots__ = ("errors", "follows", "held", "taken", "unsure")

    def __init__(self, follows: bool = True) -> None:
        self.follows = follows
        self.errors: List[ErrorReply] = []
        self.held: Optional[ErrorReply] = None  # an error line not yet known to be whose
        self.taken: Optional[ErrorReply] = None
        self.unsure = False

    def step(self, reader: Reader) -> object:
        while True:
            held = self.held
            if held is None:
                # Nothing pending: the next reply is the answer or an error line, as the
                # reader parses it (no look ahead: the common case costs what it did).
                reply = reader.next_reply()
                if reply is NEED_DATA or type(reply) is Version:
                    return reply
                if type(reply) is not ErrorReply:
                    raise reader.fail(f"unexpected reply before the sync marker: {reply!r}"[:300])
                if not reply.in_step:
                    return reply
                if not self.follows and not reader.buffered:
                    self.unsure = True  # (nothing follows the marker, and nothing more came)
                    return reply
                self.held = reply
                continue
            lines, more = reader.peek_errors(_SYNC_LOOKAHEAD)
            if not lines:
                return NEED_DATA  # (something always follows: the answer, or the next reply)
            first = lines[0]
            if first[:8] == b"VERSION ":
                self.errors.append(held)  # a noreply command's; the answer is next
                self.held = None
                continue
            if not is_error_line(first):
                return held  # the marker's own answer; ``first`` begins the next reply
            # Two error lines in a row: what follows them decides.
            after = next((line for line in lines if not is_error_line(line)), None)
            if after is None:
                if more and len(lines) < _SYNC_LOOKAHEAD:
                    return NEED_DATA  # (an incomplete line: what it is comes next)
                # Nothing decisive buffered: see the class notes.
                self.unsure = True
                if self.follows:
                    taken = reader.next_reply()
                    assert type(taken) is ErrorReply
                    self.taken = taken
                return held
            if after[:8] == b"VERSION ":
                self.errors.append(held)  # noreply errors, all of them
                self.held = None
                continue
            return held  # the marker's answer; the next reply begins with an error


def encode_sync() -> bytes:
    """The sync marker's request. ``version`` rather than the meta no-op ``mn``: every
    server and proxy knows it (twemproxy closes the connection on ``mn``), and its answer
    cannot be mistaken for an error line of an earlier command (a server that claims 1.6
    but refuses ``mn`` answers a bare ``ERROR``, exactly what a refused noreply command
    would send). When a proxy answers it with an error line, :class:`ExpectSync` tells
    that line from a noreply command's by what follows it."""
    return b"version\r\n"


def expect_auth_probe() -> Expect:
    """The reader of the reply to :func:`encode_auth_probe`: the items found (a dict), or
    an :class:`ErrorReply`."""
    return ExpectValues((AUTH_KEY,))


def asks_for_auth(reply: object) -> bool:
    """Whether the answer to :func:`encode_auth_probe` asks for the credentials: a
    ``CLIENT_ERROR`` to a ``get`` of a valid key can only refuse the client itself.
    Anything else (the items found, ``ERROR``, a ``SERVER_ERROR`` from a proxy) does not,
    and the credentials must not be sent."""
    return type(reply) is ErrorReply and reply.kind == b"CLIENT_ERROR"
