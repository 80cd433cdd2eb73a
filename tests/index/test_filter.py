"""The safe filter language of ``where=``: no payload reaches Python, allowed filters match
what pandas would select (checked against a hand-written boolean mask on the same table)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import FilterError, IndexError_

from .conftest import REP


def payloads(sentinel: str) -> list[str]:
    """Filters that ran code under DataFrame.query (the first two are the issue's) and more."""
    s = repr(sentinel)
    return [
        f"slide_id == 'S0' and @pd.io.common.os.system('touch {sentinel}') == 0",
        "@self.__class__.__init__.__globals__['os'].system('id') == 0",
        f"slide_id == 'S0' and __import__('os').system('touch {sentinel}') == 0",
        f"open({s}, 'w').write('x') > 0",
        f"organ.__class__.__mro__[1].__subclasses__() == 0 or open({s}, 'w')",
        "organ.str.len() > 0",
        "organ[0] == 'c'",
        f"(lambda: open({s}, 'w'))() == 0",
        f"[open({s}, 'w') for _ in [1]] == 0",
        "`organ` == 'colon'",
        f"@__builtins__.open({s}, 'w')",
        "x + 1 > 3",
        "x if organ else y",
        "organ is None",
        "(organ := 'x') == 'x'",
        "print('hi') or x > 0",
        "isna(organ.__class__)",
        "isna(x, y)",
        "notna(col=x)",
        f"f'{{open({s})}}' == 'a'",
        "{'a': 1} == organ",
        "organ == b'colon'",
        "__class__ == 1",
        "import os",
        "x > 0; import os",
        "1 == 1",
        "'colon'",
        "organ in organ",
        "",
        "   ",
        "not " * 200 + "x > 0",
        "(" * 300 + "x > 0" + ")" * 300,
        "x > 0 and " * 2000 + "x > 0",
        "no_such_column == 1",
    ]


@pytest.fixture()
def idx(table):
    return mm.index.build(table, use_rep=REP)


def test_hostile_filters_refused_and_nothing_runs(idx, table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = str(tmp_path / "pwned")
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    monkeypatch.setattr(pd.DataFrame, "query", lambda *a, **k: called.append(a))
    monkeypatch.setattr(pd.DataFrame, "eval", lambda *a, **k: called.append(a))
    for where in payloads(sentinel):
        with pytest.raises(FilterError) as err:
            idx.search_vectors(table.obsm[REP][:2], k=3, where=where)
        msg = str(err.value)
        assert "\n" not in msg and len(msg) < 700, where
        with pytest.raises(FilterError):  # the check alone (a web page validates with it)
            mm.index.check_filter(where, list(idx.metadata.columns))
        with pytest.raises(IndexError_):  # the API's error family for a bad filter
            idx.search(table.obsm[REP][:1], k=2, where=where)
    assert not called
    assert not os.path.exists(sentinel) and os.listdir(tmp_path) == []
    # the one-line messages say what is allowed / which columns exist
    with pytest.raises(FilterError, match="attribute access.*column names"):
        idx.filter_ids("organ.str == 'x'")
    with pytest.raises(FilterError, match="function calls"):
        idx.filter_ids("organ.str.len() > 0")
    with pytest.raises(FilterError, match="unknown column 'no_such_column'.*organ"):
        idx.filter_ids("no_such_column == 1")
    with pytest.raises(FilterError, match="'@'"):
        idx.filter_ids("@x")


def test_allowed_filters_match_masks(idx, table):
    obs = idx.metadata.copy()
    obs.loc[obs.index[:7], "cluster"] = None
    obs["flag"] = np.arange(len(obs)) % 3 == 0
    cases = {
        "organ == 'colon'": obs["organ"] == "colon",
        "organ != 'colon' and x >= 448": (obs["organ"] != "colon") & (obs["x"] >= 448),
        "(organ == 'colon') & (x < 448) | (y > 1000)": (
            (obs["organ"] == "colon") & (obs["x"] < 448)
        )
        | (obs["y"] > 1000),
        "slide_id in ['S0', 'S2']": obs[K.SLIDE_ID].isin(["S0", "S2"]),
        "slide_id not in ('S0',)": ~obs[K.SLIDE_ID].isin(["S0"]),
        "not slide_id in ['S0'] or x == 0": ~obs[K.SLIDE_ID].isin(["S0"]) | (obs["x"] == 0),
        "224 <= x < 896": (obs["x"] >= 224) & (obs["x"] < 896),
        "x > -1.5 and tissue_frac == 1.0": (obs["x"] > -1.5) & (obs["tissue_frac"] == 1.0),
        "isna(cluster)": obs["cluster"].isna(),
        "notna(cluster) and ~flag": obs["cluster"].notna() & ~obs["flag"],
        "flag": obs["flag"],
        "x < y": obs["x"] < obs["y"],
    }
    for where, want in cases.items():
        got = mm.index.filter_mask(obs, where)
        np.testing.assert_array_equal(got, want.to_numpy(bool), err_msg=where)
        if "flag" not in where and "cluster" not in where:  # the index's own metadata
            ids = idx.filter_ids(where)
            np.testing.assert_array_equal(ids, obs.index[want.to_numpy(bool)].to_numpy())
    with pytest.raises(FilterError, match="not boolean"):
        mm.index.filter_mask(obs, "organ")
    with pytest.raises(FilterError, match="cannot compare"):
        mm.index.filter_mask(obs, "x > 'abc'")


def test_search_with_filter_returns_only_matches(idx, table):
    hits = idx.search(table.obsm[REP][:3], k=5, where="organ == 'lung' and x >= 224")
    assert len(hits) == 15 and set(hits["organ"]) == {"lung"} and hits["x"].min() >= 224


def test_cli_where_payloads_run_nothing(idx, table, tmp_path, capsys, monkeypatch):
    from mmpath.cli import main

    monkeypatch.chdir(tmp_path)
    idx.save(tmp_path / "a.idx")
    mm.io.write_h5ad(table, tmp_path / "q.h5ad")
    before = sorted(os.listdir(tmp_path))
    for where in payloads("pwned")[:4] + ["`x` > 0"]:
        argv = ["search", "a.idx", "--tiles", "q.h5ad", "--rows", "0:1", "--where", where]
        assert main(argv) == 2, where
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mmpath: error: filter"), err
    assert sorted(os.listdir(tmp_path)) == before
