"""Length-prefixed messages between a process and its timing worker (:mod:`hardware_models.timing_worker`).

Each message is its payload preceded by the payload's length (8 bytes, little-endian). This lives apart from the worker
so that importing :mod:`hardware_models` does not import the worker's module, which ``python -m`` then runs as
``__main__`` (runpy warns when the module it runs is already imported).
"""

from __future__ import annotations

from typing import IO


def read_message(stream: IO[bytes]) -> bytes | None:
    """One length-prefixed message, or None when the stream has ended."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    size = int.from_bytes(header, "little")
    payload = stream.read(size)
    return payload if len(payload) == size else None


def write_message(stream: IO[bytes], payload: bytes) -> None:
    """Write ``payload`` with its length in front, and flush."""
    stream.write(len(payload).to_bytes(8, "little") + payload)
    stream.flush()
