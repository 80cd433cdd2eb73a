"""A small, safe filter language for ``where=`` / ``--where`` on tile metadata.

``DataFrame.query`` evaluates Python: its ``@name`` references resolve variables and allow
calls, so a filter typed into a web page or a command line could run shell commands. This
module never calls ``query``/``eval``/``exec``: it parses the string with :mod:`ast`, accepts
only the node types listed below, and evaluates the tree itself with vectorised pandas
operations on the metadata columns.

Grammar (everything else is refused with one line naming what is allowed)::

    expr    := expr and expr | expr or expr | not expr | (expr)
             | expr & expr | expr | expr | ~expr          (pandas-style synonyms)
             | operand OP operand [OP operand ...]         (chained comparisons)
             | column in [lit, ...] | column not in [lit, ...]
             | isna(column) | notna(column)
             | column                                     (a boolean column)
    OP      := == != < <= > >=
    operand := column | literal
    literal := 'text' | 3 | -2.5 | True | False | None

A column is a metadata column name written as a bare identifier. Comparisons with missing
values are False (pandas semantics); use ``isna(column)`` to select them.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterable

import numpy as np
import pandas as pd

from mmpath.errors import FilterError

__all__ = ["FILTER_HELP", "check_filter", "filter_mask"]

#: A filter longer than this is refused before parsing (it is a query, not a program).
MAX_LENGTH = 4000
#: Nesting deeper than this is refused (a browser-supplied string must not exhaust the stack).
MAX_DEPTH = 40

FILTER_HELP = (
    "a filter may use metadata column names, literals ('text', 3, 2.5, True, None), "
    "comparisons (== != < <= > >=), 'in'/'not in' [list], and/or/not (& | ~), "
    "isna(column)/notna(column) and parentheses"
)

_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS = {"isna", "notna"}


def _refuse(what: str) -> FilterError:
    return FilterError(f"filter not allowed: {what}; {FILTER_HELP}")


def _describe(node: ast.AST) -> str:
    names = {
        ast.Attribute: "attribute access ('.')",
        ast.Subscript: "subscripts ('[...]')",
        ast.Call: "function calls",
        ast.Lambda: "lambdas",
        ast.ListComp: "comprehensions",
        ast.SetComp: "comprehensions",
        ast.DictComp: "comprehensions",
        ast.GeneratorExp: "comprehensions",
        ast.BinOp: "arithmetic",
        ast.NamedExpr: "assignments",
        ast.Starred: "'*' unpacking",
        ast.JoinedStr: "f-strings",
        ast.IfExp: "'if ... else'",
        ast.Await: "await",
        ast.Dict: "dicts",
    }
    return names.get(type(node), f"'{type(node).__name__}' expressions")


class _Checker:
    """Walks the tree once, refusing anything outside the grammar (no evaluation)."""

    def __init__(self, columns: Iterable[str]) -> None:
        self.columns = [str(c) for c in columns]
        self._set = set(self.columns)

    def column(self, node: ast.AST) -> str:
        if not isinstance(node, ast.Name):
            raise _refuse(_describe(node))
        name = node.id
        if name.startswith("__"):
            raise _refuse(f"the name {name!r}")
        if name not in self._set:
            shown = ", ".join(self.columns[:20]) + (" ..." if len(self.columns) > 20 else "")
            raise FilterError(f"filter names unknown column {name!r}; metadata columns: {shown}")
        return name

    def literal(self, node: ast.AST):
        if isinstance(node, ast.Constant) and (
            node.value is None or isinstance(node.value, (str, int, float, bool))
        ):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant)
            and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)
        ):
            v = node.operand.value
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Constant):
            raise _refuse(f"the literal {node.value!r}")
        raise _refuse(_describe(node))

    def operand(self, node: ast.AST):
        if isinstance(node, ast.Name):
            return ("col", self.column(node))
        return ("lit", self.literal(node))

    def values(self, node: ast.AST) -> list:
        if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise _refuse("'in' needs a literal list, e.g. slide_id in ['a', 'b']")
        return [self.literal(e) for e in node.elts]

    def cond(self, node: ast.AST, depth: int = 0):
        """A condition as a small tuple tree: ('and', a, b), ('cmp', op, l, r), ..."""
        if depth > MAX_DEPTH:
            raise FilterError(f"filter nests deeper than {MAX_DEPTH} levels")
        d = depth + 1
        if isinstance(node, ast.BoolOp):
            kind = "and" if isinstance(node.op, ast.And) else "or"
            return (kind, [self.cond(v, d) for v in node.values])
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            kind = "and" if isinstance(node.op, ast.BitAnd) else "or"
            return (kind, [self.cond(node.left, d), self.cond(node.right, d)])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            return ("not", self.cond(node.operand, d))
        if isinstance(node, ast.Compare):
            parts = []
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, (ast.In, ast.NotIn)):
                    parts.append(
                        ("in", self.column(left), self.values(right), isinstance(op, ast.NotIn))
                    )
                elif type(op) in _CMP:
                    a, b = self.operand(left), self.operand(right)
                    if a[0] == "lit" and b[0] == "lit":
                        raise _refuse("a comparison of two literals (name a column)")
                    parts.append(("cmp", _CMP[type(op)], a, b))
                else:  # is / is not
                    raise _refuse("'is' / 'is not' (use isna(column) or notna(column))")
                left = right
            return parts[0] if len(parts) == 1 else ("and", parts)
        if isinstance(node, ast.Call):
            f = node.func
            if (
                isinstance(f, ast.Name)
                and f.id in _FUNCS
                and len(node.args) == 1
                and not node.keywords
            ):
                return (f.id, self.column(node.args[0]))
            raise _refuse("function calls other than isna(column) / notna(column)")
        if isinstance(node, ast.Name):
            return ("bool", self.column(node))
        if isinstance(node, ast.Constant):
            raise _refuse("a bare literal (write a condition on a column)")
        raise _refuse(_describe(node))


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _parse(where: str, columns: Iterable[str], checker: _Checker | None = None):
    if not isinstance(where, str):
        raise FilterError(f"a filter must be a string, got {type(where).__name__}")
    text = where.strip()
    if not text:
        raise FilterError(f"empty filter; {FILTER_HELP}")
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter is {len(text)} characters; the limit is {MAX_LENGTH}")
    for ch, what in (("`", "backticks"), ("@", "'@' variable references")):
        if ch in text:
            # refused before parsing: pandas gives both a meaning, ours must not look similar
            raise _refuse(what)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        msg = getattr(err, "msg", None) or type(err).__name__
        raise FilterError(f"filter {_short(text)} does not parse ({msg}); {FILTER_HELP}") from None
    try:
        return (checker or _Checker(columns)).cond(tree.body)
    except RecursionError:
        raise FilterError(f"filter nests deeper than {MAX_DEPTH} levels") from None


def check_filter(where: str, columns: Iterable[str]) -> None:
    """Refuse a filter outside the allowed language without evaluating it.

    Parameters
    ----------
    where
        The filter string.
    columns
        The column names it may use.

    Raises
    ------
    mmpath.errors.FilterError
        One line naming what is not allowed and what is.

    Example
    -------
    >>> check_filter("organ == 'colon' and tissue_frac > 0.5", ["organ", "tissue_frac"])
    """
    _parse(where, columns)


def _value(df: pd.DataFrame, opnd):
    kind, v = opnd
    return df[v] if kind == "col" else v


def _as_bool(s) -> np.ndarray:
    return np.asarray(pd.Series(s).fillna(False).to_numpy(), dtype=bool)


def _eval(df: pd.DataFrame, t) -> np.ndarray:
    kind = t[0]
    if kind == "and":
        out = _eval(df, t[1][0])
        for sub in t[1][1:]:
            out = out & _eval(df, sub)
        return out
    if kind == "or":
        out = _eval(df, t[1][0])
        for sub in t[1][1:]:
            out = out | _eval(df, sub)
        return out
    if kind == "not":
        return ~_eval(df, t[1])
    if kind == "isna":
        return df[t[1]].isna().to_numpy()
    if kind == "notna":
        return df[t[1]].notna().to_numpy()
    if kind == "bool":
        col = df[t[1]]
        if not pd.api.types.is_bool_dtype(col):
            raise FilterError(
                f"filter uses column {t[1]!r} as a condition but it is not boolean "
                f"({col.dtype}); compare it, e.g. {t[1]} == 'value'"
            )
        return _as_bool(col)
    if kind == "in":
        _, name, values, negate = t
        col = df[name]
        hit = col.isin(values).to_numpy()
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object:
            # categories/strings: also match the text of a value (slide ids may look numeric)
            hit = hit | col.astype(str).isin([str(v) for v in values if v is not None]).to_numpy()
        return ~hit if negate else hit
    if kind == "cmp":
        _, op, a, b = t
        left, right = _value(df, a), _value(df, b)
        try:
            res = op(left, right)
        except (TypeError, ValueError) as err:
            names = [v for k, v in (a, b) if k == "col"]
            raise FilterError(
                f"filter cannot compare {' and '.join(map(repr, names))} that way ({err})"
            ) from None
        return _as_bool(res)
    raise AssertionError(kind)  # pragma: no cover - the checker only builds the kinds above


def filter_mask(metadata: pd.DataFrame, where: str) -> np.ndarray:
    """Rows of ``metadata`` that match ``where``, evaluated without ``query``/``eval``.

    Parameters
    ----------
    metadata
        The table to filter (tile metadata of an index, a tile table's ``obs``...).
    where
        A filter in the language described in :mod:`mmpath.index._filter`, e.g.
        ``"organ == 'colon' and tissue_frac >= 0.5"`` or ``"slide_id not in ['a', 'b']"``.

    Returns
    -------
    A boolean array, one entry per row.

    Raises
    ------
    mmpath.errors.FilterError
        The filter is outside the language, names an unknown column, or compares values
        that cannot be compared.

    Example
    -------
    >>> mask = mm.index.filter_mask(tiles.obs, "slide_id in ['s0', 's1'] and not isna(label)")
    """
    tree = _parse(where, metadata.columns)
    out = _eval(metadata, tree)
    return np.asarray(out, dtype=bool).reshape(len(metadata))


class _Recorder(_Checker):
    """A checker that also notes the columns a filter names."""

    def __init__(self, columns: Iterable[str]) -> None:
        super().__init__(columns)
        self.used: list[str] = []

    def column(self, node: ast.AST) -> str:
        name = super().column(node)
        if name not in self.used:
            self.used.append(name)
        return name


def filter_columns(where: str, columns: Iterable[str]) -> list[str]:
    """The columns ``where`` names (checked as :func:`check_filter` does, not evaluated), so a
    filter over metadata kept on disk reads only those columns."""
    rec = _Recorder(columns)
    _parse(where, columns, checker=rec)
    return rec.used
