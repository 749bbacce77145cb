"""Checks both raw readers run on a CSV's bytes: encoding and delimiter, named as such.

Without them a UTF-16 or GBK export, or a semicolon-separated one, surfaced as a renamed column
or a decode error that said nothing about the file's encoding.
"""

from __future__ import annotations

from pathlib import Path

from eagrl_pipeline.errors import InputDataError

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_OTHER_DELIMITERS = ((";", "semicolons"), ("\t", "tabs"), ("|", "bars"))


def decode_utf8(path: Path, raw: bytes, fix: str) -> str:
    """``raw`` as text; a UTF-8 byte-order mark is dropped, UTF-16 or non-UTF-8 bytes refused.

    >>> decode_utf8(Path("x.csv"), b"\\xef\\xbb\\xbfa,b", "-")
    'a,b'
    """
    if raw.startswith(_UTF16_BOMS):
        raise InputDataError(path, "is UTF-16 text; the reader expects UTF-8.", fix=fix)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputDataError(
            path,
            f"is not UTF-8 text (byte {raw[exc.start]:#04x} at position {exc.start}; a GBK or "
            "Latin-1 export?).",
            fix=fix,
        ) from exc


def refuse_other_delimiter(path: Path, header: str, fix: str) -> None:
    """A header line without a comma but with another separator is refused, naming it."""
    if "," in header:
        return
    for delimiter, word in _OTHER_DELIMITERS:
        if delimiter in header:
            raise InputDataError(
                path, f"its columns are separated by {word}; the reader expects commas.", fix=fix
            )
