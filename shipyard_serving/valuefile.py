"""One process's metric values in a file that prometheus_client's MultiProcessCollector reads.

The layout is prometheus_client's (`prometheus_client.mmap_dict.MmapedDict`): a 4-byte count of
the bytes in use, 4 bytes of padding, then per value a 4-byte key length, the UTF-8 key padded
with spaces to an 8-byte boundary, the value and a timestamp as two doubles. MmapedDict writes a
value with a dict lookup, a struct pack and a slice assignment; here a value is an index into a
memoryview of doubles over the same mapping, so a write is one 8-byte store (never seen half done).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Protocol, cast


class Doubles(Protocol):
    """Values by index: a memoryview of doubles over the file, or a list."""

    def __getitem__(self, index: int, /) -> float: ...
    def __setitem__(self, index: int, value: float, /) -> None: ...


INITIAL_SIZE = 1 << 16  # prometheus_client's; a file grows by doubling
_USED = struct.Struct("i")


class ValueFile:
    """The values file at `path` (created, or continued if it exists): the value of `key` is
    `doubles[index(key)]`. A new key may grow the file and replace `doubles`: ask for the index
    first (`i = index(key)`, then `doubles[i]`). Not thread-safe."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a+b")  # noqa: SIM115  # open as long as the process
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            size = INITIAL_SIZE
            self._file.truncate(size)
        self._map = mmap.mmap(self._file.fileno(), size)
        self._used: int = _USED.unpack_from(self._map, 0)[0]
        self._positions: dict[str, int] = {}
        if self._used == 0:
            self._set_used(8)
        else:  # a process that reuses a dead one's pid continues its values, as prometheus_client does
            from prometheus_client.mmap_dict import MmapedDict

            for key, _, _, position in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
                self._positions[key] = position
        self.doubles = cast(Doubles, memoryview(self._map).cast("d"))

    def index(self, key: str) -> int:
        """Where `key`'s value is in `doubles` (a new key starts at 0)."""
        position = self._positions.get(key)
        if position is None:
            position = self._positions[key] = self._add(key)
        return position // 8

    def _add(self, key: str) -> int:
        encoded = key.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = struct.pack(f"i{len(padded)}sdd", len(encoded), padded, 0.0, 0.0)
        if self._used + len(entry) > len(self._map):
            self._grow(self._used + len(entry))
        self._map[self._used : self._used + len(entry)] = entry
        self._set_used(self._used + len(entry))
        return self._used - 16

    def _set_used(self, used: int) -> None:
        # A slice assignment, not pack_into, as prometheus_client does: readers never see 0.
        self._map[0:4] = _USED.pack(used)
        self._used = used

    def _grow(self, needed: int) -> None:
        size = len(self._map)
        while size < needed:
            size *= 2
        cast(memoryview, self.doubles).release()
        self._map.close()
        self._file.truncate(size)
        self._map = mmap.mmap(self._file.fileno(), size)
        self.doubles = cast(Doubles, memoryview(self._map).cast("d"))
