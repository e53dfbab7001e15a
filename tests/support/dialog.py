"""Scripted SMTP dialogs over a raw socket: send exact bytes, read exact replies.

smtplib normalises what it sends (it fixes line endings, dot-stuffs); attack tests need to send
bytes that no well-behaved client would, so they use this.
"""

from __future__ import annotations

import socket


class Dialog:
    def __init__(self, host: str, port: int, timeout: float = 10.0, source: str | None = None,
                 *, wait_banner: bool = True) -> None:
        """``wait_banner=False``: do not read the greeting (a client that talks first)."""
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.banner = self.reply() if wait_banner else (0, [])

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self) -> tuple[int, list[str]]:
        """Read one whole (possibly multi-line) reply: (code, [text of each line])."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed by server; got so far {lines}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode()
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), lines

    def cmd(self, line: str | bytes) -> tuple[int, list[str]]:
        self.send(line + ("\r\n" if isinstance(line, str) else b"\r\n"))
        return self.reply()

    def code(self, line: str | bytes) -> int:
        return self.cmd(line)[0]

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server has closed the connection (EOF) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Dialog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
