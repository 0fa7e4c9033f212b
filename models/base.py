"""The one contract of every detector: vectorised over many series, scores in [0, 1].

A detector watches ``n`` series at once. One call passes one sample of every series (a
``(m,)`` array; NaN = no sample of that series now) with its time ``ts_s`` [s] (a scalar or
one time per series, so series sampled seconds or hours apart share one call). The state of
every series is a set of numpy arrays of length ``n``: no Python loop over series, and
``snapshot()`` / ``restore()`` give all of it as named arrays (``streams.arraypack`` packs
them into a Faust table value).

- ``score(ts_s, x)``: how anomalous each sample is, from what was learnt before it; no state
  changes.
- ``learn(ts_s, x)``: take the samples into the state.
- ``update(ts_s, x)``: score, then learn (the streaming call: no look-ahead).

Scores are in [0, 1], higher = more anomalous, never NaN: a missing, non-finite or
out-of-order sample (its time not after the series' previous sample) scores 0 and is not
learnt. Each detector turns its statistic ``stat`` into a score with :func:`squash`, 0.5
exactly at the detector's threshold.

Series that appear late: a call with more series than the state holds grows it
(:meth:`Detector.resize`); ``index=`` addresses any subset (a rack's GPUs among all GPUs).
Constructor arguments are stored under their own names (:meth:`Detector.params`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from twin.errors import ConfigError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
State = dict[str, np.ndarray]

#: Fields the base keeps for every detector: time of the last learnt sample [s] and samples
#: learnt per series.
BASE_FIELDS: dict[str, float] = {"t_last_s": np.nan, "n_obs": 0.0}

#: Scale of a normal variable from its mean absolute deviation: sigma = sqrt(pi/2) * E|r|.
MAD_TO_SIGMA = float(np.sqrt(np.pi / 2.0))


def positive(name: str, value: float) -> float:
    """``value`` as a float, or a ConfigError naming the parameter if it is not > 0."""
    if not value > 0:
        raise ConfigError(f"{name}: expected > 0, got {value}")
    return float(value)


def squash(stat: Any, threshold: float | FloatArray = 1.0) -> FloatArray:
    """Score in [0, 1] of a non-negative statistic: ``1 - 2 ** -((stat / threshold) ** 2)``.

    Monotone, 0 at 0, exactly 0.5 at ``threshold``, 0.94 at twice it; for a z-score it is
    the Gaussian-shaped ``1 - exp(-z^2 ln2 / thr^2)``. NaN and negative statistics give 0.
    """
    r = np.asarray(stat, dtype=np.float64) / threshold
    out = -np.expm1(-np.log(2.0) * r * r)
    out[~(r > 0.0)] = 0.0  # NaN or <= 0
    return out


def ew_alpha(n_obs: FloatArray, half_life: float) -> FloatArray:
    """Weight [1] of a new sample in an exponentially weighted estimate with a half-life of
    ``half_life`` samples; ``1/(n+1)`` (the running mean) while a series has few samples, so
    a new series converges as fast as the data allow."""
    return np.maximum(1.0 / (n_obs + 1.0), -np.expm1(-np.log(2.0) / half_life))


def robust_step(
    loc: FloatArray,
    scale: FloatArray,
    x: FloatArray,
    alpha: FloatArray,
    clip_k: float,
    clip_on: Any,
) -> tuple[FloatArray, FloatArray]:
    """One step of an exponentially forgetting Huber estimate of location and scale.

    The residual ``r = x - loc`` is clipped at ``clip_k * scale`` (where ``clip_on``), so one
    spike moves the location by at most ``alpha * clip_k * scale``: a stochastic-approximation
    M-estimate that tends to the median for small ``clip_k``. The scale follows
    ``sqrt(pi/2) * E[min(|r|, clip_k * scale)]``, the standard deviation of normal noise
    (the clipped tail changes it by < 1 % at ``clip_k = 3``).
    """
    r = x - loc
    lim = np.where(clip_on, clip_k * scale, np.inf)
    rc = np.clip(r, -lim, lim)
    return loc + alpha * rc, scale + alpha * (MAD_TO_SIGMA * np.abs(rc) - scale)


class GroupLayout:
    """Where each series sits in a ``(n_groups, largest group)`` matrix, for group medians
    without a Python loop. Built once per distinct ``group`` array (cached by the caller)."""

    def __init__(self, group: IntArray) -> None:
        self.group = group.copy()
        order = np.argsort(group, kind="stable")
        k = int(group.max()) + 1 if group.size else 0
        counts = np.bincount(group, minlength=k)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        g_sorted = group[order]
        rank = np.arange(group.size) - starts[g_sorted]
        self.rows = np.empty(group.size, dtype=np.int64)
        self.cols = np.empty(group.size, dtype=np.int64)
        self.rows[order] = g_sorted
        self.cols[order] = rank
        self.shape = (k, int(counts.max()) if k else 0)

    def median(self, d: FloatArray, valid: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
        """Median of the valid ``d`` of each series' group, and the group's valid count."""
        m = np.full(self.shape, np.inf)
        m[self.rows, self.cols] = np.where(valid, d, np.inf)
        m.sort(axis=1)  # invalid (inf) last
        cnt = np.isfinite(m).sum(axis=1)
        lo = np.maximum((cnt - 1) // 2, 0)
        hi = np.maximum(cnt // 2, 0)
        r = np.arange(self.shape[0])
        med = 0.5 * (
            m[r, np.minimum(lo, self.shape[1] - 1)] + m[r, np.minimum(hi, self.shape[1] - 1)]
        )
        med = np.where(cnt > 0, med, np.nan)
        return med[self.group], cnt[self.group].astype(np.float64)


def group_split(
    d: FloatArray, valid: npt.NDArray[np.bool_], layout: GroupLayout, min_group: int
) -> tuple[FloatArray, FloatArray]:
    """Split a deviation ``d`` into the part a series has alone and the part its group shares.

    ``common`` = the median of the group's valid deviations, ``own = d - common``. The median,
    not the mean: one member moving alone (the fault to find) does not move it, so it does
    not leak into its neighbours' ``own``. Where a group has fewer than ``min_group`` valid
    members nothing can be shared: ``own = d``, ``common = 0``.
    """
    med, cnt = layout.median(d, valid)
    shared = cnt >= min_group
    common = np.where(shared, med, 0.0)
    return d - common, common


class Detector:
    """Base of every detector. Subclasses set :attr:`FIELDS` and :meth:`_step`.

    ``FIELDS`` maps each state array to its initial value (float64 arrays of length n; a
    ``(value, width)`` tuple makes an ``(n, width)`` array). ``_step`` gets the state of the
    series in the call (arrays it may replace or change in place), and per series: the
    time ``ts_s`` [s], the sample ``x``, ``valid`` (finite sample, in order) and ``dt_s``
    since the last learnt sample [s] (NaN for the first); it returns the statistic's score.
    """

    name: ClassVar[str] = ""
    #: Fault shape its synthetic contract trace uses (tests/models/test_contract.py).
    kind: ClassVar[str] = ""
    #: Takes a companion series ``aux`` (required if "required").
    aux: ClassVar[str] = "no"
    FIELDS: ClassVar[Mapping[str, float | tuple[float, int]]] = {}

    def __init__(self, n_series: int = 0) -> None:
        self._state: State = {}
        self._n = 0
        self.resize(int(n_series))

    # -- parameters ------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor arguments under their own names (river's ``_get_params``)."""
        import inspect

        sig = inspect.signature(type(self).__init__)
        out: dict[str, Any] = {}
        for name in list(sig.parameters)[1:]:
            if name == "n_series":
                out[name] = self._n
            else:
                out[name] = getattr(self, name)
        return out

    def clone(self) -> Detector:
        """A fresh detector with the same parameters and no state (size 0)."""
        p = self.params()
        p["n_series"] = 0
        return type(self)(**p)

    # -- state ----------------------------------------------------------------------
    @property
    def n_series(self) -> int:
        return self._n

    def _all_fields(self) -> dict[str, float | tuple[float, int]]:
        return {**BASE_FIELDS, **self.FIELDS}

    def resize(self, n: int) -> None:
        """Hold ``n`` series: new ones start empty, series past ``n`` are dropped."""
        if n < 0:
            raise ConfigError(f"{self.name}: series count must be >= 0, got {n}")
        for key, spec in self._all_fields().items():
            fill, width = spec if isinstance(spec, tuple) else (spec, 0)
            shape = (n, width) if width else (n,)
            new = np.full(shape, fill, dtype=np.float64)
            old = self._state.get(key)
            if old is not None:
                k = min(n, old.shape[0])
                new[:k] = old[:k]
            self._state[key] = new
        self._n = n

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of every state array (float64, first axis = series)."""
        return {k: v.copy() for k, v in self._state.items()}

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Take the state of :meth:`snapshot` (of a detector with the same parameters).

        Validated: every field present, float64-convertible, one common series count.
        """
        fields = self._all_fields()
        missing = sorted(set(fields) - set(snap))
        extra = sorted(set(snap) - set(fields))
        if missing or extra:
            raise ConfigError(
                f"{self.name}: snapshot fields do not match (missing {missing}, unknown {extra})"
            )
        arrays = {k: np.array(snap[k], dtype=np.float64) for k in fields}
        n = arrays["n_obs"].shape[0] if arrays["n_obs"].ndim == 1 else -1
        for key, spec in fields.items():
            width = spec[1] if isinstance(spec, tuple) else 0
            want = (n, width) if width else (n,)
            if arrays[key].shape != want:
                raise ConfigError(
                    f"{self.name}: snapshot field {key} has shape {arrays[key].shape}, "
                    f"expected {want}"
                )
        self._state = arrays
        self._n = n

    # -- calls ------------------------------------------------------------------------
    def update(
        self,
        ts_s: Any,
        x: Any,
        *,
        aux: Any = None,
        group: Any = None,
        index: Any = None,
    ) -> FloatArray:
        """Score the samples, then learn them; returns scores ``(m,)`` in [0, 1].

        ``x`` (m,) one sample per series (NaN = none); ``ts_s`` [s] scalar or (m,);
        ``aux`` (m,) companion samples for detectors that take one; ``group`` (m,) integer
        labels (e.g. the rack of each GPU) for detectors that compare neighbours; ``index``
        (m,) the series the samples belong to (default: series 0..m-1).
        """
        return self._call(ts_s, x, aux, group, index, commit=True)

    def score(
        self, ts_s: Any, x: Any, *, aux: Any = None, group: Any = None, index: Any = None
    ) -> FloatArray:
        """Scores of the samples against the current state; the state does not change."""
        return self._call(ts_s, x, aux, group, index, commit=False)

    def learn(
        self, ts_s: Any, x: Any, *, aux: Any = None, group: Any = None, index: Any = None
    ) -> None:
        """Learn the samples (as :meth:`update`, without returning scores)."""
        self._call(ts_s, x, aux, group, index, commit=True)

    def _call(
        self, ts_s: Any, x: Any, aux: Any, group: Any, index: Any, *, commit: bool
    ) -> FloatArray:
        xv = np.asarray(x, dtype=np.float64)
        if xv.ndim != 1:
            raise ConfigError(f"{self.name}: expected one sample per series (1-D), got {xv.shape}")
        m = xv.shape[0]
        idx: IntArray | None = None
        if index is not None:
            idx = np.asarray(index, dtype=np.int64)
            if idx.shape != (m,) or (m and idx.min() < 0):
                raise ConfigError(f"{self.name}: index must be (m,) non-negative series numbers")
            need = int(idx.max()) + 1 if m else 0
        else:
            need = m
        if need > self._n:
            self.resize(need)
        ts = np.broadcast_to(np.asarray(ts_s, dtype=np.float64), (m,))
        auxv = None
        if aux is not None:
            auxv = np.broadcast_to(np.asarray(aux, dtype=np.float64), (m,))
        elif self.aux == "required":
            raise ConfigError(f"{self.name}: needs a companion series (aux=)")
        grp = None
        if group is not None:
            grp = np.asarray(group, dtype=np.int64)
            if grp.shape != (m,) or (m and grp.min() < 0):
                raise ConfigError(f"{self.name}: group must be (m,) non-negative integers")
        if idx is None and m == self._n and commit:
            st = self._state
        elif idx is None:
            st = {k: v[:m].copy() for k, v in self._state.items()}
        else:
            st = {k: v[idx] for k, v in self._state.items()}
        with np.errstate(all="ignore"):
            dt = ts - st["t_last_s"]
            valid = np.isfinite(xv) & np.isfinite(ts) & ~(dt <= 0.0)
            raw = self._step(st, ts, xv, valid, dt, auxv, grp)
            st["t_last_s"] = np.where(valid, ts, st["t_last_s"])
            st["n_obs"] = st["n_obs"] + valid
            out = np.where(valid & np.isfinite(raw), np.clip(raw, 0.0, 1.0), 0.0)
        if commit and st is not self._state:
            for k, v in st.items():
                if idx is None:
                    self._state[k][:m] = v
                else:
                    self._state[k][idx] = v
        return out

    def _step(
        self,
        st: State,
        ts_s: FloatArray,
        x: FloatArray,
        valid: npt.NDArray[np.bool_],
        dt_s: FloatArray,
        aux: FloatArray | None,
        group: IntArray | None,
    ) -> FloatArray:
        raise NotImplementedError
