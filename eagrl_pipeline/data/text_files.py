"""Checks both raw readers run on a CSV's bytes: encoding and delimiter, named as such.

Without them a UTF-16 or GBK export, or a semicolon-separated one, surfaced as a renamed column
or a decode error that said nothing about the file's encoding.
"""

from __future__ import annotations

from pathlib import Path

import charset_normalizer

from eagrl_pipeline.errors import InputDataError

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_CANDIDATES = {"gb18030": "GBK", "cp1252": "Windows-1252"}  # codec -> the name users know
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
        likely = likely_encoding(raw)
        guess = f"it reads as {likely}" if likely else "neither GBK nor Windows-1252 fits either"
        raise InputDataError(
            path,
            f"is not UTF-8 text (byte {raw[exc.start]:#04x} at position {exc.start}; {guess}).",
            fix=f"{fix} (re-save it as UTF-8"
            + (f", e.g. `iconv -f {likely} -t UTF-8`)" if likely else ")"),
        ) from exc


def likely_encoding(raw: bytes) -> str | None:
    """The encoding a non-UTF-8 export most likely has, among the two these datasets' exports
    come in (GBK for TJH's Chinese original, Windows-1252 for a Latin-1 spreadsheet); None where
    neither decodes it.

    charset_normalizer over every code page guessed Korean for a short GBK header; limited to
    the two candidates it tells them apart.

    >>> likely_encoding("年龄".encode("gbk")), likely_encoding("Größe".encode("latin-1"))
    ('GBK', 'Windows-1252')
    """
    best = charset_normalizer.from_bytes(raw, cp_isolation=list(_CANDIDATES)).best()
    return None if best is None else _CANDIDATES[best.encoding]


def refuse_other_delimiter(path: Path, header: str, fix: str) -> None:
    """A header line without a comma but with another separator is refused, naming it."""
    if "," in header:
        return
    for delimiter, word in _OTHER_DELIMITERS:
        if delimiter in header:
            raise InputDataError(
                path, f"its columns are separated by {word}; the reader expects commas.", fix=fix
            )
