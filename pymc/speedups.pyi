# Types of the compiled module built from speedups.c (see pymc/protocol.py, its only user).
from typing import Any, Container, Dict, List, Optional, Tuple, Union

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
