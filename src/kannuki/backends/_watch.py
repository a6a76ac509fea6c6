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

__all__ = ["mysql_farewell", "peek", "postgres_farewell"]

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


# What the server sends on a session as it ends it. Anything else waiting on the socket may be
# the reply to a statement in flight (the user's own, on a connection they share with kannuki,
# or kannuki's from another thread that just began): never a reason to call the lock lost.
_FATAL_SEVERITIES = (b"SFATAL\x00", b"SPANIC\x00", b"VFATAL\x00", b"VPANIC\x00")
# MariaDB ER_CONNECTION_KILLED, ER_SERVER_SHUTDOWN, MySQL ER_CLIENT_INTERACTION_TIMEOUT.
_MYSQL_ENDING_ERRORS = frozenset({1927, 1053, 4031})


def postgres_farewell(data: bytes) -> bool:
    """Do the first bytes waiting on a PostgreSQL socket say the server ended the session?

    An ErrorResponse (``E``) of severity FATAL or PANIC: a reply to a statement
    is never FATAL unless the session ends with it.
    """
    return data[:1] == b"E" and any(severity in data[5:] for severity in _FATAL_SEVERITIES)


def mysql_farewell(data: bytes) -> bool:
    """Do the first bytes waiting on a MySQL/MariaDB socket say the server ended the session?

    An error packet (header, 0xFF, the code) whose code ends sessions; MariaDB's
    KILL sends nothing and closes, which ``peek`` reports as ``b""``.
    """
    return len(data) >= 7 and data[4] == 0xFF and int.from_bytes(data[5:7], "little") in _MYSQL_ENDING_ERRORS
