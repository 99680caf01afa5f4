"""The many-key commands of a cluster client, each a fan-out of one plan per node.

``get_many``/``gets_many`` (one retrieval line per node), ``set_many``, ``delete_many`` and
``touch_many`` (one line per key, pipelined per node), and the quiet meta pipelines
``meta_get_many``, ``meta_set_many`` and ``meta_delete_many``. Each groups its keys by node
(the snapshot's placement), builds each node's :class:`~pymc.cluster.fanout.Plan`, and has the
client's :class:`~pymc.cluster.fanout.FanOut` execute them; a node whose batch is too big for
one pass goes alone, in passes, through its own pooled client.

Layer: imports ``client`` (the decoders and request helpers), ``pool``, ``protocol``,
``serde`` and ``exceptions``.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ..client import (
    ClientOptions,
    CommandEnd,
    begin_command,
    decode_parts,
    decode_values,
    end_command,
    meta_batches,
    per_key_results,
    quiet_deletes,
    quiet_gets,
    resolve_noreply,
)
from ..exceptions import AllNodesDownError, MemcacheIllegalInputError, MemcacheNetworkError
from ..pool import PooledClient
from ..protocol import (
    RULES,
    ErrorReply,
    ExpectReplies,
    Rule,
    encode_delete,
    encode_storage,
    encode_touch,
    validate_keys,
)
from ..protocol.meta import ExpectMetaQuiet, encode_meta_noop, encode_meta_set, meta_key
from ..protocol.plans import node_retrieval_plan, retrieval_plans
from ..serde import coerce_to_bytes
from .fanout import FANOUT_MAX_COMMANDS, FanOut, Observe, Plan
from .health import Health, is_connection_failure
from .nodeset import AnyKey, NodeSet, bare_key, place_keys, server_key

__all__ = ["ManyKeys"]

#: What a meta pipeline's ``finish`` returns for a node to be asked again through its own
#: client, after the fan-out (which then raises that node's precise error).
_ASK_ALONE: Any = object()


def _no_meta(reply: ErrorReply) -> bool:
    """Whether a meta pipeline's error is a bare ``ERROR``: a server without meta commands
    (the connection was given up: its reader is poisoned)."""
    return reply.kind == b"ERROR" and not reply.message


def _items(reply: Any) -> Any:
    """A node's retrieval reply: its items, or its error raised as Client raises it."""
    if type(reply) is ErrorReply:
        raise reply.exception("get_many")
    return reply


def _all_true(group: List[AnyKey]) -> Callable[[Any], Dict[Any, bool]]:
    return lambda _: {k: True for k in group}


def _per_key(group: List[AnyKey], rule: Rule, where: str) -> Callable[[Any], _Answers]:
    def finish(replies: Any) -> _Answers:
        results, error = per_key_results(group, replies, rule, where)
        if error is not None and is_connection_failure(error):
            # The server refused the connection (``ERROR Too many open connections``,
            # then a hang-up): the node's failure, counted and its connection destroyed,
            # not one command's error.
            raise error
        return _Answers(results, error)

    return finish


class _Answers(Dict[Any, Any]):
    """A node's answers to a pipeline, by key (False for a key whose reply was an error),
    and the exception for those error replies, if any."""

    def __init__(self, results: Iterable[Tuple[Any, Any]], error: Optional[Exception]) -> None:
        super().__init__(results)
        self.error = error


def _with_keys(
    finish: Callable[[Any, Dict[bytes, Any]], Any], key_of: Dict[bytes, Any]
) -> Callable[[Any], Any]:
    return lambda found: finish(found, key_of)


class ManyKeys:
    """The many-key commands, for :class:`~pymc.cluster.HashClient` (a mixin over its
    snapshot ``_nodes``, ``options``, ``ignore_exc``, ``_health`` and ``_fanout``)."""

    if TYPE_CHECKING:
        _nodes: NodeSet
        options: ClientOptions
        ignore_exc: bool
        _health: Health
        _fanout: FanOut
        _dead: Dict[str, Any]
        _meta_nodes: Set[str]

        def _no_nodes(self) -> AllNodesDownError: ...

    def _groups(self, nodes: NodeSet, keys: Iterable[AnyKey]) -> Dict[str, List[AnyKey]]:
        """Keys grouped by node (see :meth:`NodeSet.group`); raises when there is none."""
        if self._dead:
            self._health.maybe_probe()
        if not nodes.names:
            raise self._no_nodes()
        return nodes.group(keys)

    def _observer(
        self, command: str, nodes: NodeSet, keys: Mapping[str, Iterable[Any]]
    ) -> Optional[Observe]:
        """What starts the observation of one node's part of a fan-out of ``command``
        (``keys``: each node's keys), or None without an ``on_command`` hook."""
        hook = self.options.on_command
        if hook is None:
            return None

        def observe(name: str) -> Optional[CommandEnd]:
            return begin_command(hook, command, tuple(keys.get(name, ())), nodes.servers[name])

        return observe

    def _retrieve(self, command: str, keys: Iterable[AnyKey], with_cas: bool) -> Dict[Any, Any]:
        if type(keys) is not list:
            keys = list(keys)
        if not keys:
            return {}
        nodes = self._nodes
        opts = self.options
        # Every key is checked before anything is routed or sent; spellings of one key
        # (str and bytes) are one key, answered under its last spelling, as by Client.
        # ``(server_key, key)`` tuples are routed by their server key: two tuples naming
        # one key on two nodes are two keys; on one node, one (the last). (A tuple is no
        # key validate_keys takes: it raises, and only then are the keys looked at.)
        checked: Optional[Dict[bytes, AnyKey]] = None
        try:
            checked = validate_keys(keys, opts.key_prefix, opts.allow_unicode_keys)  # type: ignore[arg-type,assignment]
        except MemcacheIllegalInputError:
            if not any(type(k) is tuple for k in keys):
                raise
        try:
            if checked is not None:
                wanted_by_node = self._placed(nodes, checked)
            else:
                raw_of: Dict[AnyKey, bytes] = {key: self._raw(key) for key in keys}
                wanted_by_node = {
                    name: {raw_of[key]: key for key in group}
                    for name, group in self._groups(nodes, raw_of).items()
                }
        except AllNodesDownError:
            if self.ignore_exc:
                return {}
            raise
        cmd = command.encode()
        command = "gets_many" if with_cas else "get_many"
        plans: Dict[str, Optional[Plan]] = {}
        for name, wanted in wanted_by_node.items():
            plan = node_retrieval_plan(cmd, wanted, with_cas)
            # (one too long for a request line goes alone, in passes)
            plans[name] = None if len(plan.request) > opts.max_get_line else plan

        observe = None
        if opts.on_command is not None:
            by_node = {name: wanted.values() for name, wanted in wanted_by_node.items()}
            observe = self._observer(command, nodes, by_node)

        def alone(name: str) -> Any:
            end = None if observe is None else observe(name)
            try:
                found = in_passes(name)
            except BaseException as exc:
                end_command(end, exc)
                raise
            end_command(end, None)
            return found

        def in_passes(name: str) -> Any:
            wanted = wanted_by_node[name]
            passes, found = retrieval_plans(
                cmd, wanted, list(wanted), None, with_cas, opts.max_get_line
            )
            self._execute_alone(nodes.clients[name], passes)
            return found

        found = self._fanout.execute(command, nodes, plans, alone, observe)
        if checked is not None:  # each raw key on one node: decoded together, in one call
            return decode_parts(list(found.values()), checked, opts, with_cas)
        out: Dict[Any, Any] = {}
        for name, items in found.items():
            out.update(decode_values(items, wanted_by_node[name], opts, with_cas))
        return out

    def _execute_alone(self, client: PooledClient, passes: List[Plan]) -> None:
        """Run ``passes`` (one node's batch, too big for one pass) on one connection of that
        node's ``client``, under one deadline, as a Client's get_many does."""
        with client.client_pool.get_and_release() as conn:
            conn.execute_all(passes)

    def _placed(
        self, nodes: NodeSet, checked: Dict[bytes, AnyKey]
    ) -> Dict[str, Dict[bytes, AnyKey]]:
        """:meth:`_groups` for checked keys (``{raw: key}``, no tuple among them): each
        node's ``{raw: key}``, built in one pass over the placements already cached."""
        if self._dead:
            self._health.maybe_probe()
        if not nodes.names:
            raise self._no_nodes()
        placed: Dict[str, Dict[bytes, AnyKey]]
        unseen: Optional[Dict[AnyKey, bytes]]
        placed, unseen = place_keys(checked, nodes.cache)
        if unseen:  # placed by the locator (in one batch where it can), and cached
            for name, group in self._groups(nodes, list(unseen)).items():
                wanted = placed.setdefault(name, {})
                for key in group:
                    wanted[unseen[key]] = key
        return placed

    def get_many(self, keys: Iterable[AnyKey]) -> Dict[Any, Any]:
        """Values of the keys present over all nodes, fetched from the nodes in parallel."""
        return self._retrieve("get", keys, False)

    get_multi = get_many

    def gets_many(self, keys: Iterable[AnyKey]) -> Dict[Any, Tuple[Any, Any]]:
        """``{key: (value, cas)}`` over all nodes, fetched in parallel."""
        return self._retrieve("gets", keys, True)

    gets_multi = gets_many

    def _pipelined(
        self,
        command: str,
        items: List[Tuple[AnyKey, bytes]],
        rule: Rule,
        noreply: bool,
        plain_call: Callable[[str, List[AnyKey]], Any],
    ) -> Dict[Any, Any]:
        """Fan out one line per key (set/delete/touch): ``{key: what its reply means}``."""
        nodes = self._nodes
        try:
            groups = self._groups(nodes, [k for k, _ in items])
        except AllNodesDownError:
            if self.ignore_exc:
                return {k: False for k, _ in items}
            raise
        lines = dict(items)
        plans: Dict[str, Optional[Plan]] = {}
        for name, group in groups.items():
            if len(group) > FANOUT_MAX_COMMANDS:
                plans[name] = None  # goes alone, in passes, through the node's pool
                continue
            request = b"".join(lines[k] for k in group)
            if noreply:
                plans[name] = Plan(command, request, None, _all_true(group))
            else:
                where = f" on {name}"
                expect = partial(ExpectReplies, rule, len(group))
                plans[name] = Plan(command, request, expect, _per_key(group, rule, where))

        def alone(name: str) -> Any:
            return plain_call(name, groups[name])  # (observed by the node's client)

        results = self._fanout.execute(
            command, nodes, plans, alone, self._observer(command, nodes, groups), noreply
        )
        out: Dict[Any, Any] = {}
        error: Optional[Exception] = None
        for name, group in groups.items():
            answers = results.get(name)
            if answers is None:  # the node failed (and ignore_exc hid it)
                out.update((k, False) for k in group)
            else:
                out.update(answers)
                error = error or getattr(answers, "error", None)
        if error is not None and not self.ignore_exc:
            raise error  # once every node's replies were read, as Client.set_many does
        return out

    def set_many(
        self,
        values: Mapping[Any, Any],
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> List[Any]:
        """Store many values over all nodes in parallel; return the keys not stored."""
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        items = []
        for key, value in values.items():
            real = bare_key(key)
            raw = self._raw(key)
            data, data_flags = opts.serde.serialize(real, value)
            if type(data) is not bytes:
                data = coerce_to_bytes(data, opts.encoding, real)
            line = encode_storage(
                b"set", raw, data, data_flags if flags is None else flags, expire, noreply
            )
            items.append((key, line))

        def plain(name: str, group: List[AnyKey]) -> Dict[Any, bool]:
            sub = {bare_key(k): values[k] for k in group}
            failed = set(
                self._nodes_client(name).run("set_many", (sub, expire, noreply, flags), {})
            )
            return {k: bare_key(k) not in failed for k in group}

        result = self._pipelined("set_many", items, RULES["set"], noreply, plain)
        return [k for k, stored in result.items() if not stored]

    set_multi = set_many

    def delete_many(self, keys: Iterable[AnyKey], noreply: Optional[bool] = None) -> bool:
        """Delete many keys over all nodes in parallel. True."""
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        items = [(key, encode_delete(self._raw(key), noreply)) for key in keys]

        def plain(name: str, group: List[AnyKey]) -> Dict[Any, bool]:
            reals = [bare_key(k) for k in group]
            self._nodes_client(name).run("delete_many", (reals, noreply), {})
            return {k: True for k in group}

        self._pipelined("delete_many", items, RULES["delete"], noreply, plain)
        return True

    delete_multi = delete_many

    # ------------------------------------------------------------------ meta pipelines

    def _meta_groups(
        self, keys: Iterable[AnyKey]
    ) -> Tuple[NodeSet, Dict[str, List[Tuple[bytes, Tuple[Any, bool]]]]]:
        """Each node's ``[(wire key, (caller key, base64?))]``; one entry per wire key."""
        opts = self.options
        wires: Dict[Any, Tuple[bytes, bool]] = {}
        for key in keys:
            wires[key] = meta_key(bare_key(key), opts.key_prefix, True)
        nodes = self._nodes
        groups = self._groups(nodes, list(wires))
        out: Dict[str, List[Tuple[bytes, Tuple[Any, bool]]]] = {}
        for name, group in groups.items():
            by_wire = {wires[k][0]: (k, wires[k][1]) for k in group}
            out[name] = list(by_wire.items())
        return nodes, out

    def _quiet_fan_out(
        self,
        command: str,
        keys: Iterable[AnyKey],
        build: Callable[[List[Tuple[bytes, Tuple[Any, bool]]], Callable[[], bytes]], Any],
        finish: Callable[[Any, Dict[bytes, Any]], Any],
        alone: Callable[[str, List[Any]], Any],
        known_only: bool = False,
    ) -> Dict[str, Any]:
        """A quiet meta pipeline to every node at once: ``{node: finish(found, key_of)}``
        (``alone(node, caller keys)`` for a node whose batch is too big for one pass, and
        with ``known_only`` for a node not yet known to have meta commands)."""
        try:
            nodes, groups = self._meta_groups(keys)
        except AllNodesDownError:
            if self.ignore_exc:
                return {}
            raise
        tokens = itertools.count()

        def opaque() -> bytes:
            return b"%x" % next(tokens)

        plans: Dict[str, Optional[Plan]] = {}
        for name, batch in groups.items():
            if (known_only and name not in self._meta_nodes) or len(meta_batches(batch)) > 1:
                plans[name] = None
                continue
            request, sent, key_of = build(batch, opaque)
            expect = partial(ExpectMetaQuiet, sent)
            plans[name] = Plan(command, request, expect, _with_keys(finish, key_of))

        def solo(name: str) -> Any:
            return alone(name, [key for _, (key, _) in groups[name]])  # (observed there)

        by_node = {name: [key for _, (key, _) in batch] for name, batch in groups.items()}
        results = self._fanout.execute(
            command, nodes, plans, solo, self._observer(command, nodes, by_node)
        )
        # Each node that answered (or whose own client did) has meta commands.
        self._meta_nodes.update(name for name, got in results.items() if got is not _ASK_ALONE)
        return results

    def meta_get_many(self, keys: Iterable[AnyKey]) -> Dict[Any, Any]:
        """The values of the keys present, from every node at once: one quiet ``mg``
        pipeline per node (only the hits come back)."""
        opts = self.options

        def finish(found: Any, key_of: Dict[bytes, Any]) -> Any:
            if type(found) is ErrorReply:
                if _no_meta(found):
                    return _ASK_ALONE  # (its own client names the server's version)
                raise found.exception("mg")
            items = {t: (r.client_flags or 0, r.value, None) for t, r in found.items() if r.hit}
            return decode_values(items, key_of, opts, False)

        def alone(name: str, group: List[Any]) -> Dict[Any, Any]:
            got = self._nodes_client(name).run("meta_get_many", ([bare_key(k) for k in group],), {})
            return {k: got[bare_key(k)] for k in group if bare_key(k) in got}

        keys = list(keys)
        results = self._quiet_fan_out("meta_get_many", keys, quiet_gets, finish, alone)
        out: Dict[Any, Any] = {}
        for name, values in results.items():
            if values is _ASK_ALONE:
                values = alone(name, self._keys_on(name, keys))
            out.update(values)
        return out

    def meta_delete_many(self, keys: Iterable[AnyKey], *, invalidate: bool = False) -> List[Any]:
        """Delete (or mark stale) many keys on every node at once; return those not found."""

        def build(batch: Any, opaque: Callable[[], bytes]) -> Any:
            return quiet_deletes(batch, opaque, invalidate)

        def finish(found: Any, key_of: Dict[bytes, Any]) -> Any:
            if type(found) is ErrorReply:
                if _no_meta(found):
                    return _ASK_ALONE  # (its own client names the server's version)
                raise found.exception("md")
            return [key_of[t] for t, r in found.items() if r.status == "not_found"]

        def alone(name: str, group: List[Any]) -> List[Any]:
            reals = [bare_key(k) for k in group]
            gone = set(
                self._nodes_client(name).run(
                    "meta_delete_many", (reals,), {"invalidate": invalidate}
                )
            )
            return [k for k in group if bare_key(k) in gone]

        keys = list(keys)
        results = self._quiet_fan_out("meta_delete_many", keys, build, finish, alone)
        out: List[Any] = []
        for name, missing in results.items():
            if missing is _ASK_ALONE:
                missing = alone(name, self._keys_on(name, keys))
            out.extend(missing)
        return out

    def meta_set_many(self, values: Mapping[Any, Any], ttl: int = 0) -> List[Any]:
        """Store many values on every node at once (one quiet ``ms`` pipeline per node);
        return the keys not stored. A node whose pipeline drew an error line is asked
        again through its own client, which finds the key and raises its error."""
        opts = self.options
        retry_alone = _ASK_ALONE

        def build(batch: Any, opaque: Callable[[], bytes]) -> Any:
            requests: List[bytes] = []
            sent: List[Tuple[bytes, ...]] = []
            key_of: Dict[bytes, Any] = {}
            for wire, (key, b64) in batch:
                real = bare_key(key)
                data, client_flags = opts.serde.serialize(real, values[key])
                if type(data) is not bytes:
                    data = coerce_to_bytes(data, opts.encoding, real)
                token = opaque()
                requests.append(
                    encode_meta_set(
                        wire,
                        data,
                        base64=b64,
                        client_flags=client_flags,
                        ttl=ttl,
                        opaque=token,
                        quiet=True,
                    )
                )
                sent.append((token, b"ms"))
                key_of[token] = key
            requests.append(encode_meta_noop())
            return b"".join(requests), sent, key_of

        def finish(found: Any, key_of: Dict[bytes, Any]) -> Any:
            if type(found) is ErrorReply:
                if not found.in_step:
                    raise found.exception("ms")
                return retry_alone
            return [key_of[t] for t, r in found.items() if r.status != "stored"]

        def alone(name: str, group: List[Any]) -> List[Any]:
            sub = {bare_key(k): values[k] for k in group}
            failed = set(self._nodes_client(name).run("meta_set_many", (sub, ttl), {}))
            return [k for k in group if bare_key(k) in failed]

        results = self._quiet_fan_out("meta_set_many", values, build, finish, alone, True)
        failed: List[Any] = []
        for name, answer in results.items():
            if answer is retry_alone:
                group = self._keys_on(name, values)
                answer = alone(name, group)
            failed.extend(answer)
        return failed

    def touch_many(
        self, keys: Iterable[AnyKey], expire: int = 0, noreply: Optional[bool] = None
    ) -> Dict[Any, bool]:
        """Touch many keys over all nodes in parallel: ``{key: whether it existed}``."""
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        items = [(key, encode_touch(self._raw(key), expire, noreply)) for key in keys]

        def plain(name: str, group: List[AnyKey]) -> Dict[Any, bool]:
            client = self._nodes_client(name)
            return {k: client.run("touch", (bare_key(k), expire, noreply), {}) for k in group}

        return self._pipelined("touch", items, RULES["touch"], noreply, plain)

    def _raw(self, key: AnyKey) -> bytes:
        opts = self.options
        checked = validate_keys((bare_key(key),), opts.key_prefix, opts.allow_unicode_keys)
        return checked.popitem()[0]

    def _keys_on(self, name: str, keys: Iterable[AnyKey]) -> List[AnyKey]:
        """Those of ``keys`` that node ``name`` holds."""
        return [k for k in keys if self._nodes.node_for(server_key(k)) == name]

    def _nodes_client(self, name: str) -> PooledClient:
        nodes = self._nodes
        client = nodes.clients.get(name)
        if client is None:
            raise MemcacheNetworkError(f"{name} is no longer in the cluster")
        return client
