"""A gRPC caller that never reads its answers, over a raw HTTP/2 connection.

It opens every stream's flow-control window at zero (SETTINGS_INITIAL_WINDOW_SIZE
0) and never widens it, so a server can send the answers' headers but none
of their bytes: they stay in the server's buffers for as long as the
connection is open. It answers the server's SETTINGS and PINGs, as a live
client does, so the connection is not dropped for that.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType

from google.protobuf.message import Message

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _SETTINGS, _PING = 0x0, 0x1, 0x4, 0x6
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1
_INITIAL_WINDOW_SIZE = 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman."""
    name_bytes, value_bytes = name.encode(), value.encode()
    assert len(name_bytes) < 127 and len(value_bytes) < 127
    return bytes([0, len(name_bytes)]) + name_bytes + bytes([len(value_bytes)]) + value_bytes


class SlowReader:
    """Calls unary methods of ``address`` and never reads what they answer."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self._authority = address
        self._socket = socket.create_connection((host, int(port)), timeout=10)
        self._socket.settimeout(None)
        self._send_lock = threading.Lock()
        self._next_stream = 1
        self._send(_PREFACE + _frame(_SETTINGS, 0, 0, struct.pack(">HI", _INITIAL_WINDOW_SIZE, 0)))
        self._reader = threading.Thread(target=self._answer_control_frames, daemon=True)
        self._reader.start()

    def call(self, method: str, request: Message) -> None:
        """Send one call (``/package.Service/Method``) on a new stream."""
        stream = self._next_stream
        self._next_stream += 2
        headers = b"".join(
            _literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", self._authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        body = request.SerializeToString()
        message = b"\0" + struct.pack(">I", len(body)) + body
        self._send(
            _frame(_HEADERS, _END_HEADERS, stream, headers)
            + _frame(_DATA, _END_STREAM, stream, message)
        )

    def close(self) -> None:
        # Shut down first: a close alone waits for the reading thread's recv.
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._reader.join(timeout=10)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._socket.sendall(data)

    def _answer_control_frames(self) -> None:
        try:
            while True:
                header = self._read(9)
                length = int.from_bytes(header[:3], "big")
                kind, flags = header[3], header[4]
                payload = self._read(length)
                if kind == _SETTINGS and not flags & _ACK:
                    self._send(_frame(_SETTINGS, _ACK, 0, b""))
                elif kind == _PING and not flags & _ACK:
                    self._send(_frame(_PING, _ACK, 0, payload))
        except OSError:
            return  # closed

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self._socket.recv(count - len(data))
            if not chunk:
                raise OSError("the server closed the connection")
            data += chunk
        return data

    def __enter__(self) -> SlowReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
