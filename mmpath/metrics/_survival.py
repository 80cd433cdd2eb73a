"""Survival metrics: Harrell's concordance index and the Cox partial likelihood (numpy).

:func:`cox_ph_loss` is the reference the torch loss of the MIL survival head
(:func:`mmpath.models.heads.mil.cox_loss`) is tested against; both use Breslow's handling of
tied times (with no ties it equals Efron's, and lifelines' partial likelihood).
"""

from __future__ import annotations

import numpy as np

from mmpath.errors import DataError

__all__ = ["concordance_index", "cox_ph_loss"]


def _arrays(time, risk, event) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=float).ravel()
    r = np.asarray(risk, dtype=float).ravel()
    e = np.asarray(event).astype(bool).ravel()
    if not (len(t) == len(r) == len(e)):
        raise DataError(f"time, risk and event differ in length ({len(t)}, {len(r)}, {len(e)})")
    if not (np.isfinite(t).all() and np.isfinite(r).all()):
        raise DataError("survival times and risks must be finite numbers")
    return t, r, e


def concordance_index(time, risk, event) -> float:
    """Harrell's C: the fraction of comparable pairs whose risks are ordered like their times.

    A pair ``(i, j)`` is comparable when ``time[i] < time[j]`` and ``i`` had the event; it is
    concordant when ``risk[i] > risk[j]`` (higher risk, earlier event); tied risks count 1/2.
    (lifelines' ``concordance_index(time, -risk, event)`` gives the same number.)

    Parameters
    ----------
    time
        Follow-up times.
    risk
        Predicted risks (higher = shorter survival), e.g. a Cox model's log-hazard.
    event
        1 where the event was observed, 0 where censored.

    Returns
    -------
    C in [0, 1] (0.5 = random); NaN when no pair is comparable.

    Example
    -------
    >>> concordance_index([1, 2, 3], [3.0, 2.0, 1.0], [1, 1, 1])
    1.0
    """
    t, r, e = _arrays(time, risk, event)
    num = den = 0.0
    for lo in range(0, len(t), 2048):  # O(n²) pairs in row blocks: flat memory
        ti, ri, ei = t[lo : lo + 2048, None], r[lo : lo + 2048, None], e[lo : lo + 2048, None]
        comparable = ei & (ti < t[None, :])
        den += comparable.sum()
        num += (comparable & (ri > r[None, :])).sum() + 0.5 * (
            comparable & (ri == r[None, :])
        ).sum()
    return float(num / den) if den else float("nan")


def cox_ph_loss(time, risk, event) -> float:
    """Negative Cox partial log-likelihood per event (Breslow ties).

    ``-1/n_events * sum_{i: event} (risk_i - log sum_{j: time_j >= time_i} exp(risk_j))``.

    Parameters
    ----------
    time, risk, event
        As in :func:`concordance_index` (``risk`` is the log-hazard).

    Returns
    -------
    The loss; NaN when no event was observed.

    Example
    -------
    >>> round(cox_ph_loss([1, 2], [0.0, 0.0], [1, 1]), 4)
    0.3466
    """
    t, r, e = _arrays(time, risk, event)
    if not e.any():
        return float("nan")
    order = np.argsort(-t, kind="stable")
    t_s, r_s, e_s = t[order], r[order], e[order]
    # log-sum-exp over the risk set {j: t_j >= t_i}: cumulative over descending times, then
    # the last index of each tied time group (so ties share the full set).
    m = r_s.max()
    cum = np.log(np.cumsum(np.exp(r_s - m))) + m
    last = np.searchsorted(-t_s, -t_s, side="right") - 1
    log_risk = cum[last]
    return float(-(r_s[e_s] - log_risk[e_s]).sum() / e_s.sum())
