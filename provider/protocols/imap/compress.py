"""COMPRESS=DEFLATE (RFC 4978): raw deflate both ways, switched on under a running session."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

# zlib's least CPU-hungry level: IMAP responses still shrink to about a third (RFC 4978 §4).
LEVEL = 1
# Decompressed octets handed to the reader at a time. The reader pauses us (pause_reading)
# once it holds more than its limit, so a small "deflate bomb" never expands all at once.
CHUNK = 64 * 1024


class DeflateTransport:
    """Stands in for a connection's transport in its StreamReader and StreamWriter: writes are
    compressed (each flushed with Z_SYNC_FLUSH, so every response reaches the client whole),
    received octets are decompressed before the reader sees them, and the reader's flow
    control (pause/resume) is applied to the compressed input that is still waiting."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.inner: Any = transport
        self.reader = reader
        self._compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
        self._decompressor = zlib.decompressobj(-15)
        self._pending = b""  # compressed input not yet decompressed
        self._paused = False  # the reader asked for no more input
        self._broken = False
        self._feed = reader.feed_data
        # Octets already buffered arrived after the COMPRESS command: they are compressed.
        buffered = bytes(reader._buffer)  # type: ignore[attr-defined]
        reader._buffer.clear()  # type: ignore[attr-defined]
        reader.feed_data = self._received  # type: ignore[method-assign]
        reader._transport = self  # type: ignore[attr-defined]  # pause/resume come here
        writer._transport = self  # type: ignore[attr-defined]
        if buffered:
            self._received(buffered)

    # --- receiving

    def _received(self, data: bytes) -> None:
        if self._broken or not data:
            return
        self._pending += data
        self._pump()

    def _pump(self) -> None:
        while self._pending and not self._paused:
            try:
                octets = self._decompressor.decompress(self._pending, CHUNK)
            except zlib.error:
                # Not deflate: nothing the client says can be understood any more.
                self._broken = True
                self._pending = b""
                self.inner.abort()
                return
            self._pending = self._decompressor.unconsumed_tail
            if self._decompressor.eof:
                # The client ended its deflate stream: whatever follows is not a command.
                self._pending = b""
                self.reader.feed_eof()
                return
            if octets:
                self._feed(octets)  # may call pause_reading
            elif not self._pending:
                break
        if self._pending:
            self.inner.pause_reading()

    def pause_reading(self) -> None:
        self._paused = True
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        # Not inline: the reader asks for more just before it starts waiting for it, and
        # data fed before then would wake nobody (asyncio's StreamReader._wait_for_data).
        self._paused = False
        asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if self._paused or self._broken:
            return
        self._pump()
        if not self._paused and not self._pending:
            self.inner.resume_reading()

    def is_reading(self) -> bool:
        return not self._paused

    # --- sending

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.inner.write(
            self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        )

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False

    # --- everything else is the connection's own

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def start_deflate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Compress from the next octet on, both ways (after the tagged OK went out)."""
    DeflateTransport(writer.transport, reader, writer)


def deflate_active(writer: asyncio.StreamWriter) -> bool:
    return isinstance(writer.transport, DeflateTransport)
