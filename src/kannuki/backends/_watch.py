"""Looking at an idle connection's socket without a round trip: has the server ended the session?

A database server that terminates a session (``pg_terminate_backend``, ``KILL``, an idle
timeout, a shutdown) sends a last message and closes the socket; on a healthy idle
connection the server sends nothing. So the socket of a held lock's connection, idle
between statements, becomes readable only when something happened; reading ahead with
``MSG_PEEK`` tells what without taking it from the driver.
"""

from __future__ import annotations

import os
import select
import socket

__all__ = ["peek"]

# Enough for the type byte of the first message and a little of its text.
PEEK_BYTES = 64


def peek(fd: int) -> bytes | None:
    """What the server has sent on ``fd`` that nobody read yet, left in place.

    None when nothing is waiting (a healthy idle connection); ``b""`` when the server
    closed the connection or it was reset; else the first bytes waiting. Never blocks.
    """
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):  # the descriptor is already closed
        return b""
    if not readable:
        return None
    # A duplicate descriptor, so closing our socket object leaves the driver's untouched.
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:  # reset by the peer
        return b""
    finally:
        sock.close()
