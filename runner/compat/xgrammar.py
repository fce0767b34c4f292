"""xgrammar: the text of a JSON-schema grammar."""

from __future__ import annotations

# --- xgrammar ------------------------------------------------------------------------------------------

# xgrammar (0.2.8, 0.2.9) writes the characters of a JSON-schema string with minLength / maxLength as
# [^"\\\r\n], which lets raw control characters (a NUL byte token) into the string: not JSON. Its plain
# strings exclude them, as JSON requires.
_LENGTH_CHARS = r"[^\"\\\r\n]"
_JSON_CHARS = r"[^\0-\x1f\"\\\r\n]"


def json_strings_without_controls(grammar):
    """A JSON-schema grammar whose length-bounded strings exclude control characters, as its plain
    strings do. Why undocumented: the fix edits the grammar's EBNF text (`str(grammar)`, re-read with
    `Grammar.from_ebnf`), whose layout xgrammar does not document; when the layout changes the text
    no longer holds the pattern and the grammar is returned as it is (tests/test_compat.py then fails,
    naming the version). Checked: xgrammar 0.2.8, 0.2.9."""
    import xgrammar as xgr

    text = str(grammar)
    return (
        xgr.Grammar.from_ebnf(text.replace(_LENGTH_CHARS, _JSON_CHARS)) if _LENGTH_CHARS in text else grammar
    )
