"""How deeply a JSON document nests, measured on its bytes before anything parses it.

Python's ``json`` parser recurses once per level: a ~100 KB body of ``[`` exhausts the
interpreter's recursion limit inside BentoML's request parsing, and what follows is no
answer at all. The body guard therefore refuses deep bodies first, with this scanner:
brackets inside strings do not count (escaped quotes handled), the work is done by numpy
over 256 KiB slices (about 12 MiB of temporary arrays whatever the body's size), and a
body with few brackets is passed by two ``bytes.count`` calls without being scanned.
"""

from __future__ import annotations

import numpy as np

_SLICE = 1 << 18
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN = np.zeros(256, dtype=np.int32)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def exceeds_depth(body: bytes, limit: int) -> bool:
    """Whether arrays and objects in ``body`` nest more than ``limit`` levels deep.

    Only the nesting is judged: a body that is not JSON at all is left to the parser.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, backslashes = 0, False, 0
    for start in range(0, len(body), _SLICE):
        data = np.frombuffer(
            body, dtype=np.uint8, count=min(_SLICE, len(body) - start), offset=start
        )
        quotes, backslashes = _unescaped_quotes(data, backslashes)
        inside = (np.cumsum(quotes, dtype=np.int32) + in_string) & 1
        steps = np.where(inside == 1, 0, _OPEN[data])
        levels = np.cumsum(steps, dtype=np.int32) + depth
        if int(levels.max()) > limit:
            return True
        depth, in_string = int(levels[-1]), bool(inside[-1])
    return False


def _unescaped_quotes(data: np.ndarray, carried: int) -> tuple[np.ndarray, int]:
    """The quote bytes that open or close a string (not preceded by an odd run of
    backslashes), and the run of backslashes the slice ends with; ``carried`` is the run
    the previous slice ended with."""
    backslash = data == _BACKSLASH
    count = np.cumsum(backslash, dtype=np.int32)
    # At each byte, the backslashes counted up to the last byte that was not one: the
    # difference is the length of the run of backslashes ending there (0 elsewhere).
    run = count - np.maximum.accumulate(np.where(backslash, 0, count))
    not_backslash = np.flatnonzero(~backslash)
    first = int(not_backslash[0]) if not_backslash.size else len(data)
    run[:first] += carried  # the run that began in an earlier slice goes on
    preceding = np.concatenate(([carried], run[:-1]))
    return (data == _QUOTE) & (preceding % 2 == 0), int(run[-1])
