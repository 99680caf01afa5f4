# Types of the compiled module built from speedups.c (see pymc/protocol.py and
# pymc/meta.py, its only users).
from typing import Any, Callable, Container, Dict, List, Optional, Tuple, TypeVar, Union

_T = TypeVar("_T")

MAX_LINE_LENGTH: int

def scan_values(
    buf: bytes,
    pos: int,
    cap: Optional[int],
    wanted: Container[bytes],
    found: Dict[bytes, Tuple[int, bytes, Optional[bytes]]],
    /,
) -> Tuple[int, Any, Any]: ...
def check_keys(
    keys: Union[List[Any], Tuple[Any, ...]], prefix: bytes, limit: int, /
) -> Optional[Dict[bytes, Any]]: ...
def parse_meta_head(
    line: bytes, make: Callable[[bytes, Optional[int], Dict[str, object]], _T], /
) -> Union[_T, str]: ...

# Linux only (see pymc.client._compiled_exchange).
EXCHANGE_RECV_SIZE: int

def exchange(sock: Any, request: bytes, started: float, /) -> bytes: ...
def place_keys(
    checked: Dict[bytes, Any], cache: Dict[Any, Optional[str]], /
) -> Tuple[Dict[str, Dict[bytes, Any]], Optional[Dict[Any, bytes]]]: ...
def merge_values(
    parts: List[Dict[bytes, Tuple[int, bytes, Optional[bytes]]]], wanted: Dict[bytes, Any], /
) -> Dict[Any, bytes]: ...
def scan_meta_quiet(
    buf: bytes,
    pos: int,
    cap: Optional[int],
    opaques: List[bytes],
    last: int,
    sent: List[Tuple[bytes, Optional[bytes]]],
    results: Dict[bytes, Any],
    result_type: type,
    /,
) -> Tuple[int, int, int, bool]: ...
def encode_meta_quiet(
    command: bytes, wires: List[bytes], flags: bytes, first: int, mask: int, /
) -> Optional[Tuple[bytes, List[bytes]]]: ...
