"""Command line: ``python -m pymc discover HOST:PORT`` and ``stats HOST:PORT``."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .client import Client
from .elasticache import discover
from .exceptions import MemcacheError, MemcacheUnknownCommandError


def _discover(args: argparse.Namespace) -> int:
    try:
        config = discover(args.endpoint, timeout=args.timeout)
    except MemcacheUnknownCommandError:
        print(f"{args.endpoint} is not an ElastiCache configuration endpoint (it answered ERROR)")
        return 1
    print(f"version {config.version}")
    for node in config.nodes:
        print(f"{node.hostname} {node.ip or '-'} {node.port}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    client = Client(args.server, connect_timeout=args.timeout, timeout=args.timeout)
    try:
        stats = client.stats(*args.args)
    finally:
        client.close()
    width = max((len(k) for k in stats), default=0)
    for name, value in stats.items():
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        print(f"{name.decode('utf-8', 'replace'):<{width}}  {text}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pymc")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("discover", help="ask an ElastiCache configuration endpoint for its nodes")
    p.add_argument("endpoint", help="HOST:PORT of the configuration endpoint")
    p.set_defaults(run=_discover)
    p = sub.add_parser("stats", help="print a server's stats")
    p.add_argument("server", help="HOST:PORT or a UNIX socket path")
    p.add_argument("args", nargs="*", help="a stats sub-command, e.g. settings, slabs")
    p.set_defaults(run=_stats)
    # No "bench" here: it would import whatever ``benchmarks`` package is on sys.path (the
    # current directory's, another project's). The benchmark is ``make bench``.
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except (MemcacheError, OSError, ValueError) as exc:  # ValueError: a malformed address
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
