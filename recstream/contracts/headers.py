"""What an HTTP header can carry: the API key is one, sent by the client and checked by the reader.

A key the header cannot carry matches no request: the client cannot send it, and the reader (its server strips
a value's surrounding whitespace and reads its bytes as Latin-1) never sees it as set. So both refuse it at start,
the client when it is built and the settings when they are read (``RECSTREAM_API_KEY``).
"""

from __future__ import annotations


def header_value(name: str, value: str) -> str:
    """``value`` if an HTTP header can carry it (printable ASCII, spaces and tabs inside), else a ValueError naming
    ``name`` and the problem, never the value (a key): httpx raised on every call instead, the key in its message.

    >>> header_value("api_key", "key\\n")
    Traceback (most recent call last):
    ...
    ValueError: api_key has leading or trailing whitespace (a line break read with it from a file?)
    """
    if value != value.strip():
        raise ValueError(f"{name} has leading or trailing whitespace (a line break read with it from a file?)")
    bad = next((k for k, char in enumerate(value) if not (" " <= char <= "~" or char == "\t")), None)
    if bad is not None:
        raise ValueError(f"{name}: character {bad + 1} cannot go in an HTTP header (printable ASCII only)")
    return value
