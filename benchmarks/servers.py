"""Local memcached processes for the benchmarks (loopback only, killed on exit)."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
from typing import List, Optional, Tuple

Address = Tuple[str, int]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """``count`` memcached nodes on free 127.0.0.1 ports."""

    def __init__(
        self, count: int = 4, memory_mb: int = 256, threads: int = 2, cpu: Optional[int] = None
    ) -> None:
        binary = shutil.which("memcached")
        if binary is None:
            raise SystemExit("memcached not found: install it (apt-get install memcached)")
        self.addresses: List[Address] = []
        self._procs: List[subprocess.Popen[bytes]] = []
        for _ in range(count):
            port = _free_port()
            args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
            args += ["-m", str(memory_mb), "-t", str(threads), "-c", "8192"]
            if os.geteuid() == 0:
                args += ["-u", "root"]
            pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
            self._procs.append(subprocess.Popen(args, stderr=subprocess.DEVNULL, preexec_fn=pin))
            self.addresses.append(("127.0.0.1", port))
        atexit.register(self.stop)
        deadline = time.monotonic() + 5
        for address in self.addresses:
            while True:
                try:
                    socket.create_connection(address, timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"memcached on {address} did not start") from None
                    time.sleep(0.02)

    @property
    def pids(self) -> List[int]:
        return [proc.pid for proc in self._procs]

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait(timeout=5)
        self._procs = []
