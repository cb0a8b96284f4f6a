"""Cost model: per-symbol EWMA of spread and slippage, conditioned on volatility and participation.

Calibrated once a day from the day's fills (TCA records) and published as CostModelUpdated, which
the risk service's cost gate and the fill simulator consume (issue 6 §3, seed 001 §3, seed 002
C-TCA-01). Pure: no I/O, no clock, no randomness.

Model of one taker fill's cost in bps of the arrival mid, the fill simulator's own formula in
expectation (libs.fillsim.costs, seed 001 §2):

    cost = spread_bps / 2 + slippage_bps + vol_coef * sigma_bps + impact_coef * sigma_bps * sqrt(p)

sigma_bps is the decision bar's Parkinson volatility and p = qty / bar_volume (capped at 1).

Calibration of one day, per symbol and pooled over all symbols (the pooled one is the default,
the price of a symbol with no estimate of its own):
1. Each fill's realised slippage beyond half the spread, y = side * (fill_px - mid) / mid * 1e4
   - spread_bps / 2, is winsorised at +-Params.winsor_bps; sigma is capped at max_sigma_bps and
   a quoted spread at max_spread_obs_bps, so one absurd fill cannot carry a day.
2. The day's sufficient statistics (counts, sums and cross-products of y, sigma and
   m = sigma * sqrt(p)) are exact integers in units of 1e-4 bps, so they add up in O(1) per fill,
   merge in any order and give the same bits whatever the order of the fills.
3. The day's estimate is a least squares of y on [1, sigma, m] with non-negative slopes (the
   intercept, slippage_bps, may be negative: price improvement). A slope the day cannot identify
   (its regressor barely varies, or sigma and m are collinear, e.g. one participation all day)
   stays at yesterday's value. A fill with bar_volume 0 (unknown) has m = 0, so it adds nothing
   to the impact regressor's normal equation; its impact, if any, shows in the intercept and
   the sigma slope - as in the fill simulator, which charges no impact on a bar without volume.
4. new = prev + w * (day - prev), w = alpha * min(1, n / min_samples), alpha = 1 - 2^(-1/halflife)
   and n the fills that inform that parameter (quoted spreads for spread_bps, fills of known
   volume for impact_coef): a thin day moves the model little.
5. A symbol with fewer than min_samples fills in all (seed 000: AI_TRADING_MIN_TCA_SAMPLES_FOR_ADAPT
   = 20) publishes the new default: its few fills inform the pooled estimate, not one of its own.
6. The raw (unbounded) value is clamped to Bounds: the symbol is listed out_of_bounds and
   `clamped` names the fields cut. Then each field moves at most max_daily_change of its previous
   value per day (seed 000 App. P: "cap daily parameter deltas", "no unbounded parameter drift"),
   with a floor on the step so a parameter at 0 can still move.
Published values are Decimals quantized to 1e-4.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from operator import add

import msgspec

from libs import sessions
from libs.contracts.base import derive_id, tag_of
from libs.contracts.tca import CostModelUpdated, SymbolCost

DEFAULT_SYMBOL = "*"  # the symbol field of the default (pooled) SymbolCost
FIELDS = ("spread_bps", "slippage_bps", "vol_coef", "impact_coef")
QUANTUM = Decimal("0.0001")
Q = 10_000  # sufficient statistics are integers in units of 1e-4 bps
ZERO = Decimal(0)


class Bounds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of every published parameter and of the expected cost the risk gate uses."""

    # one cent on a $1000 stock is 0.1 bps; a tighter quoted spread (a few very high-priced names)
    # is priced at the floor, which only overstates their cost. 200 bps (2%) is a spread keel has
    # no business paying on a routine basis: beyond it the estimate is a data fault.
    min_spread_bps: Decimal = Decimal("0.1")
    max_spread_bps: Decimal = Decimal(200)
    # negative down to a mid fill on a 50 bps spread (brokers' price improvement is real); a
    # lower figure means a wrong arrival benchmark. 100 bps beyond half the spread on average
    # is a broken execution path, not a cost.
    min_slippage_bps: Decimal = Decimal(-25)
    max_slippage_bps: Decimal = Decimal(100)
    # the simulator's expected |z| term is 0.1 * sqrt(2/pi) = 0.08 sigma; 2 means paying two bar
    # sigmas on every fill
    min_vol_coef: Decimal = ZERO
    max_vol_coef: Decimal = Decimal(2)
    # Y of the square-root law is of order one (0.5-1 in Toth et al. 2011; Bouchaud et al. 2018
    # ch. 12); 3 is three times the largest published value
    min_impact_coef: Decimal = ZERO
    max_impact_coef: Decimal = Decimal(3)
    # a one-way cost is never negative for the gate (price improvement is not a reason to trade)
    # and above 3% no sane strategy trades anyway: the cap keeps a model fault from flooding the
    # gate with absurd numbers
    min_expected_cost_bps: Decimal = ZERO
    max_expected_cost_bps: Decimal = Decimal(300)

    def __post_init__(self) -> None:
        for name in (*FIELDS, "expected_cost_bps"):
            lo, hi = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            if not (lo.is_finite() and hi.is_finite()) or lo > hi:
                raise ValueError(f"expected finite min_{name} <= max_{name}, was {lo} / {hi}")
        for name in ("min_spread_bps", "min_vol_coef", "min_impact_coef", "min_expected_cost_bps"):
            if getattr(self, name) < 0:
                raise ValueError(f"expected {name} >= 0, was {getattr(self, name)}")

    def of(self, name: str) -> tuple[Decimal, Decimal]:
        """Return (min, max) of a SymbolCost field or of expected_cost_bps."""
        return getattr(self, f"min_{name}"), getattr(self, f"max_{name}")


# The prior is the fill simulator's defaults (libs.fillsim.costs.CostModel) in expectation:
# spread = its 5 bps proxy, slippage = its fixed 0.5 bps, vol_coef = 0.1 * E|N(0,1)| =
# 0.1 * sqrt(2/pi) (the simulator draws 0.1 * sigma * |z|, the model charges vol_coef * sigma),
# impact = its square-root-law Y of 0.7.
PRIOR = SymbolCost(
    symbol=DEFAULT_SYMBOL,
    spread_bps=Decimal(5),
    slippage_bps=Decimal("0.5"),
    vol_coef=Decimal("0.0798"),
    impact_coef=Decimal("0.7"),
)


class Params(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the daily calibration."""

    # alpha = 1 - 2^(-1/3) = 0.21: a change of cost regime is half absorbed after three sessions,
    # while one odd session moves the model by a fifth of its surprise
    halflife_sessions: float = 3.0
    min_samples: int = 20  # seed 000: AI_TRADING_MIN_TCA_SAMPLES_FOR_ADAPT
    winsor_bps: float = 500.0  # |slippage| of one fill counted at most this (a 5% miss is a fault)
    max_sigma_bps: float = 1000.0  # a 10% Parkinson range within one bar is a halt, not a regime
    max_spread_obs_bps: float = 1000.0  # one fill's quoted spread counted at most this
    max_daily_change: float = 0.25  # each parameter moves at most 25% of its value per session
    # a slope is identified on a day only if its regressor's variance is at least this share of
    # its mean square (and sigma and m are not this close to collinear)
    min_rel_var: float = 1e-3
    prior: SymbolCost = PRIOR
    bounds: Bounds = Bounds()

    def __post_init__(self) -> None:
        for name in ("halflife_sessions", "winsor_bps", "max_sigma_bps", "max_spread_obs_bps", "max_daily_change"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"expected {name} > 0 and finite, was {value}")
        if self.min_samples < 1:
            raise ValueError(f"expected min_samples >= 1, was {self.min_samples}")
        if not 0 < self.min_rel_var < 1:
            raise ValueError(f"expected 0 < min_rel_var < 1, was {self.min_rel_var}")
        cut = violations(self.prior, self.bounds)
        if cut:
            raise ValueError(f"expected the prior within the bounds, was outside in {', '.join(cut)}")

    @property
    def alpha(self) -> float:
        """Return the EWMA weight of a full day: 1 - 2^(-1/halflife)."""
        return 1.0 - 2.0 ** (-1.0 / self.halflife_sessions)


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """One fill as the calibration sees it."""

    symbol: str
    side: str  # "buy" or "sell"
    qty: int
    mid: Decimal  # the arrival mid: the decision bar's close
    fill_px: Decimal
    spread_bps: Decimal  # of the decision bar
    spread_is_proxy: bool
    sigma_bps: Decimal  # the decision bar's Parkinson volatility in bps; 0 when high == low
    bar_volume: int  # 0 = unknown

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise ValueError(f"expected side buy or sell, was {self.side!r} ({self.symbol})")
        if self.qty <= 0 or self.bar_volume < 0:
            raise ValueError(
                f"expected qty > 0 and bar_volume >= 0, was {self.qty} / {self.bar_volume} ({self.symbol})"
            )
        for name in ("mid", "fill_px"):
            value = getattr(self, name)
            if not value.is_finite() or value <= 0:
                raise ValueError(f"expected {name} > 0 and finite, was {value} ({self.symbol})")
        for name in ("spread_bps", "sigma_bps"):
            value = getattr(self, name)
            if not value.is_finite() or value < 0:
                raise ValueError(f"expected {name} >= 0 and finite, was {value} ({self.symbol})")


class DayStats(msgspec.Struct, frozen=True):
    """Sufficient statistics of one symbol's fills, exact integers (units of 1e-4 bps): mergeable.

    s = sigma_bps, m = sigma_bps * sqrt(participation) (0 when the volume is unknown), y =
    slippage beyond half the spread; the sums of products are in units of 1e-8 bps^2.
    """

    n: int = 0
    n_quoted: int = 0  # fills with a quoted (not proxy) spread
    n_impact: int = 0  # fills with a known bar volume
    n_winsorized: int = 0
    sum_spread: int = 0  # of quoted spreads only
    sum_s: int = 0
    sum_m: int = 0
    sum_y: int = 0
    sum_ss: int = 0
    sum_sm: int = 0
    sum_mm: int = 0
    sum_sy: int = 0
    sum_my: int = 0
    sum_yy: int = 0


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    """One day's calibration: the new model and what the bounds and the daily cap cut."""

    default: SymbolCost
    symbols: tuple[SymbolCost, ...]  # sorted by symbol
    out_of_bounds: tuple[str, ...] = ()  # symbols (DEFAULT_SYMBOL for the default) whose raw estimate left the bounds
    capped: tuple[str, ...] = ()  # symbols whose move the daily cap cut
    samples: int = 0  # fills of the day
    winsorized: int = 0  # fills of the day whose slippage was cut to +-winsor_bps


def slippage_bps(obs: Observation) -> float:
    """Return a fill's realised cost beyond half the spread, in bps of the mid (positive = cost)."""
    sign = 1.0 if obs.side == "buy" else -1.0
    mid = float(obs.mid)
    return sign * (float(obs.fill_px) - mid) / mid * 1e4 - float(obs.spread_bps) / 2


def _terms(obs: Observation, params: Params) -> tuple[int, ...]:
    # one fill's contribution to DayStats, field by field
    raw = slippage_bps(obs)
    w = params.winsor_bps
    y = min(max(raw, -w), w)
    s = min(float(obs.sigma_bps), params.max_sigma_bps)
    if obs.bar_volume > 0:
        m = s * math.sqrt(min(obs.qty / obs.bar_volume, 1.0))
        known = 1
    else:
        m, known = 0.0, 0
    quoted = 0 if obs.spread_is_proxy else 1
    sp = round(min(float(obs.spread_bps), params.max_spread_obs_bps) * Q) if quoted else 0
    yi, si, mi = round(y * Q), round(s * Q), round(m * Q)
    return (
        1,
        quoted,
        known,
        1 if y != raw else 0,
        sp,
        si,
        mi,
        yi,
        si * si,
        si * mi,
        mi * mi,
        si * yi,
        mi * yi,
        yi * yi,
    )


def observe(stats: DayStats, obs: Observation, params: Params) -> DayStats:
    """Return the statistics with one more fill."""
    return DayStats(*map(add, msgspec.structs.astuple(stats), _terms(obs, params)))


def merge(a: DayStats, b: DayStats) -> DayStats:
    """Return the statistics of both sets of fills (exact: associative and commutative)."""
    return DayStats(*map(add, msgspec.structs.astuple(a), msgspec.structs.astuple(b)))


def accumulate(observations: Iterable[Observation], params: Params) -> dict[str, DayStats]:
    """Return each symbol's statistics of a day's fills in one pass (the same sums as folding observe)."""
    acc: dict[str, tuple[int, ...]] = {}
    terms = _terms
    for obs in observations:
        t = terms(obs, params)
        prev = acc.get(obs.symbol)
        acc[obs.symbol] = t if prev is None else tuple(map(add, prev, t))
    return {sym: DayStats(*acc[sym]) for sym in sorted(acc)}


class _DayFit(msgspec.Struct, frozen=True):
    spread: float | None
    slippage: float | None
    vol: float | None  # None: not identified this day
    impact: float | None


def _fit(d: DayStats, anchor_vol: float, anchor_impact: float, tol: float) -> _DayFit:
    n = d.n
    spread = d.sum_spread / (d.n_quoted * Q) if d.n_quoted else None
    if n == 0:
        return _DayFit(spread=spread, slippage=None, vol=None, impact=None)
    # centered cross-products, exact: n^2 * covariance in units of 1e-8
    c_ss = n * d.sum_ss - d.sum_s * d.sum_s
    c_mm = n * d.sum_mm - d.sum_m * d.sum_m
    c_sm = n * d.sum_sm - d.sum_s * d.sum_m
    vol_ok = c_ss > 0 and c_ss >= tol * n * d.sum_ss
    impact_ok = (
        d.n_impact >= 2
        and c_mm > 0
        and c_mm >= tol * n * d.sum_mm
        and (not vol_ok or c_ss * c_mm - c_sm * c_sm >= tol * c_ss * c_mm)
    )
    nn = n * n
    cov = {
        ("s", "s"): c_ss / nn,
        ("m", "m"): c_mm / nn,
        ("s", "m"): c_sm / nn,
        ("m", "s"): c_sm / nn,
        ("s", "y"): (n * d.sum_sy - d.sum_s * d.sum_y) / nn,
        ("m", "y"): (n * d.sum_my - d.sum_m * d.sum_y) / nn,
    }
    c_yy = (n * d.sum_yy - d.sum_y * d.sum_y) / nn
    mean = {"s": d.sum_s / (n * Q), "m": d.sum_m / (n * Q)}
    mean_y = d.sum_y / (n * Q)
    # a slope the day cannot identify is held at its anchor: take its part out of y first
    fixed = {k: v for k, v, ok in (("s", anchor_vol, vol_ok), ("m", anchor_impact, impact_ok)) if not ok}
    free = [k for k in ("s", "m") if k not in fixed]
    cy = {j: cov[j, "y"] - sum(b * cov[k, j] for k, b in fixed.items()) for j in free}
    cyy = c_yy - 2 * sum(b * cov[k, "y"] for k, b in fixed.items())
    cyy += sum(b * c * cov[k, j] for k, b in fixed.items() for j, c in fixed.items())
    mean_y -= sum(b * mean[k] for k, b in fixed.items())
    # non-negative slopes: the best feasible least squares over the subsets of the free slopes
    best: tuple[float, dict[str, float]] | None = None
    subsets = [sub for sub in (("s", "m"), ("s",), ("m",), ()) if set(sub) <= set(free)]
    for sub in subsets:
        beta: dict[str, float]
        if len(sub) == 2:
            det = cov["s", "s"] * cov["m", "m"] - cov["s", "m"] ** 2
            beta = {
                "s": (cy["s"] * cov["m", "m"] - cy["m"] * cov["s", "m"]) / det,
                "m": (cy["m"] * cov["s", "s"] - cy["s"] * cov["s", "m"]) / det,
            }
        elif len(sub) == 1:
            beta = {sub[0]: cy[sub[0]] / cov[sub[0], sub[0]]}
        else:
            beta = {}
        if any(b < 0 for b in beta.values()):
            continue
        rss = cyy - sum(b * cy[k] for k, b in beta.items())
        if best is None or rss < best[0]:
            best = (rss, beta)
    beta = best[1] if best is not None else {}
    slopes = {k: beta.get(k, 0.0) for k in free}
    intercept = mean_y - sum(b * mean[k] for k, b in slopes.items())
    return _DayFit(spread=spread, slippage=intercept, vol=slopes.get("s"), impact=slopes.get("m"))


def _weight(count: int, params: Params) -> float:
    return params.alpha * min(1.0, count / params.min_samples)


def _raw(prev: SymbolCost, d: DayStats, params: Params) -> dict[str, float]:
    # EWMA of the day's estimate into the previous values, before bounds and cap
    old = {f: float(getattr(prev, f)) for f in FIELDS}
    fit = _fit(d, old["vol_coef"], old["impact_coef"], params.min_rel_var)
    day = {"spread_bps": fit.spread, "slippage_bps": fit.slippage, "vol_coef": fit.vol, "impact_coef": fit.impact}
    counts = {"spread_bps": d.n_quoted, "slippage_bps": d.n, "vol_coef": d.n, "impact_coef": d.n_impact}
    out = {}
    for f in FIELDS:
        est = day[f]
        out[f] = old[f] if est is None else old[f] + _weight(counts[f], params) * (est - old[f])
    return out


def _publish(
    symbol: str, prev: SymbolCost, raw: Mapping[str, float], samples: int, params: Params
) -> tuple[SymbolCost, bool]:
    # note the fields the bounds cut, cap the move, quantize, clamp; returns the cost and whether the cap cut a move
    bounds, prior = params.bounds, params.prior
    values: dict[str, Decimal] = {}
    clamped: list[str] = []
    capped = False
    for f in FIELDS:
        lo, hi = bounds.of(f)
        x = raw[f]
        if x < float(lo) or x > float(hi):
            clamped.append(f)
        p = float(getattr(prev, f))
        floor = max(abs(float(getattr(prior, f))), 0.01 * float(hi - lo))
        step = params.max_daily_change * max(abs(p), floor)
        moved = min(max(x, p - step), p + step)
        capped = capped or moved != x
        value = Decimal(moved).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
        if value.is_zero():
            value = ZERO.quantize(QUANTUM)  # never publish "-0.0000"
        # the bounds after the cap: the same as before it while prev lies within them, and the
        # bounds win over the cap when a configuration tightened them
        values[f] = min(max(value, lo), hi)
    cost = SymbolCost(symbol=symbol, samples=samples, clamped=tuple(clamped), **values)
    return cost, capped


def calibrate(
    prev: Mapping[str, SymbolCost], default: SymbolCost, day: Mapping[str, DayStats], params: Params
) -> Calibration:
    """Return the model after one more day of fills.

    `prev` and `default` are the model in force (Params.prior and {} on the first day); `day`
    holds each symbol's statistics of the day's fills. Cost is O(symbols), the fills having been
    reduced to `day` in O(fills).
    """
    pooled = DayStats()
    for sym in sorted(day):
        pooled = merge(pooled, day[sym])
    new_default, default_capped = _publish(
        DEFAULT_SYMBOL, default, _raw(default, pooled, params), default.samples + pooled.n, params
    )
    out: list[SymbolCost] = []
    oob: list[str] = [DEFAULT_SYMBOL] if new_default.clamped else []
    capped: list[str] = [DEFAULT_SYMBOL] if default_capped else []
    empty = DayStats()
    for sym in sorted(set(prev) | set(day)):
        before = prev.get(sym, default)  # a new symbol was priced at the default until now
        d = day.get(sym, empty)
        samples = (before.samples if sym in prev else 0) + d.n
        if samples < params.min_samples:
            # too few fills of its own: it prices at the (pooled) default, which its fills inform
            raw = {f: float(getattr(new_default, f)) for f in FIELDS}
        elif d.n == 0:
            raw = {f: float(getattr(before, f)) for f in FIELDS}  # no news: an adapted symbol keeps its estimate
        else:
            raw = _raw(before, d, params)
        cost, was_capped = _publish(sym, before, raw, samples, params)
        out.append(cost)
        if cost.clamped:
            oob.append(sym)
        if was_capped:
            capped.append(sym)
    return Calibration(
        default=new_default,
        symbols=tuple(out),
        out_of_bounds=tuple(oob),
        capped=tuple(capped),
        samples=pooled.n,
        winsorized=pooled.n_winsorized,
    )


def violations(cost: SymbolCost, bounds: Bounds) -> tuple[str, ...]:
    """Return the fields of a SymbolCost that are not finite or lie outside the bounds."""
    bad = []
    for f in FIELDS:
        value: Decimal = getattr(cost, f)
        lo, hi = bounds.of(f)
        if not value.is_finite() or not lo <= value <= hi:
            bad.append(f)
    return tuple(bad)


def expected_cost_bps(cost: SymbolCost, sigma_bps: Decimal, participation: Decimal | None, bounds: Bounds) -> Decimal:
    """Return the expected one-way cost in bps, clamped to the bounds (what the cost gate charges).

    participation None (bar volume unknown) adds no impact term, as the fill simulator charges
    none on a bar without volume; a caller wanting caution passes its participation cap instead.
    """
    if not sigma_bps.is_finite() or sigma_bps < 0:
        raise ValueError(f"expected sigma_bps >= 0 and finite, was {sigma_bps} ({cost.symbol})")
    total = cost.spread_bps / 2 + cost.slippage_bps + cost.vol_coef * sigma_bps
    if participation is not None:
        if not participation.is_finite() or participation < 0:
            raise ValueError(f"expected participation >= 0 and finite, was {participation} ({cost.symbol})")
        total += cost.impact_coef * sigma_bps * min(participation, Decimal(1)).sqrt()
    lo, hi = bounds.of("expected_cost_bps")
    return min(max(total, lo), hi).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def cost_of(model: CostModelUpdated, symbol: str) -> SymbolCost:
    """Return a symbol's cost in a published model, or the model's default."""
    for cost in model.symbols:
        if cost.symbol == symbol:
            return cost
    return model.default


def to_event(
    cal: Calibration,
    *,
    session: str,
    effective_session: str,
    calibrated_ts: int,
    ts_init: int,
    correlation_id: str,
    causation_id: str,
) -> CostModelUpdated:
    """Build the CostModelUpdated of a calibration; its id depends on the session and the content only."""
    content = msgspec.json.encode((cal.default, cal.symbols, cal.out_of_bounds, cal.samples))
    tag = tag_of(CostModelUpdated)
    return CostModelUpdated(
        event_id=derive_id(tag, session, effective_session, hashlib.sha256(content).hexdigest()),
        correlation_id=correlation_id,
        causation_id=causation_id,
        ts_event=calibrated_ts,
        ts_init=ts_init,
        session=session,
        effective_session=effective_session,
        calibrated_ts=calibrated_ts,
        default=cal.default,
        symbols=cal.symbols,
        out_of_bounds=cal.out_of_bounds,
        samples=cal.samples,
    )


def age_sessions(model_session: date, current: date) -> int:
    """Return how many XNYS sessions after the model's session `current` is (0 = the same day)."""
    if current <= model_session:
        return 0
    return len(sessions.sessions_between(model_session, current)) - (1 if sessions.is_session(model_session) else 0)


def supersedes(model: CostModelUpdated, held: CostModelUpdated | None) -> bool:
    """Tell whether a published model replaces the one held: a later session's, or a later
    calibration of the same one (a redelivered or older model replaces nothing)."""
    return held is None or (model.effective_session, model.calibrated_ts) > (
        held.effective_session,
        held.calibrated_ts,
    )
