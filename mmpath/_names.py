"""One rule for user-supplied names that become file or folder names.

Weights names (``$MMPATH_HOME/weights/<name>/``), slide ids (``<out>/<slide_id>.h5ad``),
``key_added`` (``<key>_slides.csv``) and other output names all pass through
:func:`check_name` before any file is touched. A name is **one safe path component**:

* a non-empty string of at most :data:`MAX_LEN` characters;
* no path separator (``/``, ``\\``), NUL or other control character;
* not starting with ``.``: this refuses ``.`` and ``..`` (which would name the parent folder
  or the folder itself: ``weights install .`` used to replace every installed model) as well
  as hidden names that could collide with the ``.NAME.tmp-PID`` / ``.NAME.old-PID`` siblings
  that atomic writes use.

:func:`to_component` is the same rule applied by substitution, for names that are data rather
than identifiers (gene names in picture file names).
"""

from __future__ import annotations

import re

from mmpath.errors import UnsafeNameError

__all__ = ["MAX_LEN", "check_name", "is_safe_name", "to_component"]

MAX_LEN = 200
_BAD_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")
RULE = "one path component: no '/' or '\\', no control characters, not starting with '.'"


def is_safe_name(name: object) -> bool:
    """True when ``name`` may be used as a single file or folder name."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_LEN
        and not name.startswith(".")
        and not _BAD_CHARS.search(name)
        and name.strip() == name
    )


def check_name(name: object, *, what: str = "name") -> str:
    """Return ``name`` unchanged when it is one safe path component, else refuse it.

    Parameters
    ----------
    name
        The user-supplied name.
    what
        What the name is, for the message (``"weights name"``, ``"slide id"``, ``"--key-added"``).

    Raises
    ------
    mmpath.errors.UnsafeNameError
        One line saying what was wrong and what the rule is.

    Example
    -------
    >>> check_name("uni", what="weights name")
    'uni'
    """
    if is_safe_name(name):
        return name  # type: ignore[return-value]
    if not isinstance(name, str):
        why = f"must be a string, got {type(name).__name__}"
    elif not name:
        why = "is empty"
    elif len(name) > MAX_LEN:
        why = f"is {len(name)} characters long (limit {MAX_LEN})"
    else:
        why = "is not allowed"
    shown = repr(name)[:80] if isinstance(name, str) else ""
    raise UnsafeNameError(f"{what} {shown} {why}; a {what} must be {RULE}".replace("  ", " "))


def to_component(text: str, *, fallback: str = "_") -> str:
    """``text`` made into one safe path component (bad characters become ``_``).

    Example
    -------
    >>> to_component("HLA-A/B")
    'HLA-A_B'
    """
    out = _BAD_CHARS.sub("_", str(text)).strip()[:MAX_LEN]
    out = "_" + out[1:] if out.startswith(".") else out
    return out if out else fallback
