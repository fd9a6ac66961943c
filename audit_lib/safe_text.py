"""Names typed by people (model names, subjects' names and aliases) that are later echoed
to terminals, PDFs and web pages: refused when they hold characters that would rewrite
what is shown (control characters, CR/LF, bidirectional overrides), and escaped when
printing what an older version stored.
"""

from __future__ import annotations

import unicodedata

__all__ = ["BIDI_CONTROLS", "display", "unsafe_character"]

#: embedding/override (U+202A-U+202E) and isolate (U+2066-U+2069) controls: they reorder
#: the text shown after them ("Trojan Source", Boucher and Anderson, USENIX Security 2023)
BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def unsafe_character(text: str) -> str | None:
    """A description of the first character of ``text`` that may not be shown raw
    (a control character, a line or paragraph separator, a bidi control), or None."""
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in BIDI_CONTROLS or cat in ("Cc", "Zl", "Zp") or (cat == "Cf" and ch not in "\u200c\u200d"):
            name = unicodedata.name(ch, "control character")
            return f"U+{ord(ch):04X} ({name.lower()})"
    return None


def display(text: str | None) -> str:
    """``text`` for a terminal line: unsafe characters written as ``\\uXXXX`` escapes."""
    if text is None:
        return ""
    out = []
    for ch in text:
        out.append(f"\\u{ord(ch):04x}" if unsafe_character(ch) else ch)
    return "".join(out)
