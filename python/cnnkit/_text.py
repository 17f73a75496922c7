"""Docstrings as plain text for command-line help (argparse prints a description as it is)."""
from __future__ import annotations

import re

__all__ = ["plain"]

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """``text`` without reST inline markup: ````code```` -> code, ``:func:`name``` -> name."""
    return _ROLE.sub(r"\1", text).replace("``", "")
