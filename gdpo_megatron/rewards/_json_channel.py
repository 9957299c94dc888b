"""Runs inside a sandbox (prepended with code_values.py's source): the private JSON-lines
channel of a candidate or checker process. It takes its own copies of stdin and stdout
before the program runs, then points fd 0 at /dev/null and fd 1 at stderr, so nothing the
program reads or prints can be taken for a message.
"""


def open_channel():
    """(incoming binary stream of request lines, send(message) writing one JSON line)."""
    import json
    import os

    incoming = os.fdopen(os.dup(0), "rb")
    outgoing = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)

    def send(message):
        outgoing.write(json.dumps(message).encode() + b"\n")
        outgoing.flush()

    return incoming, send
