"""Implementation shortfall of one order and its Perold decomposition (pure).

Perold, A. F. (1988), "The implementation shortfall: paper versus reality", Journal of Portfolio
Management 14(3): the shortfall is what a paper portfolio that traded every share at the
decision price would have made, less what the real one made. Split as in the CFA Institute's
curriculum ("Execution of Portfolio Decisions"; Wagner and Edwards) into four parts, each in
money, signed so that a positive number is a cost (side = +1 buy, -1 sell):

    explicit    = fees and commissions
    delay       = side * filled * (submit_price - decision_price)
    execution   = side * sum(fill_qty * fill_px) - side * filled * submit_price   (realised P&L)
    opportunity = side * (qty - filled) * (end_price - decision_price)             (missed trade)

and in bps of the paper notional qty * decision_price. With the submit benchmark the decision
price is replaced by the submit price, so delay is 0 by definition.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

BPS = Decimal(10_000)
_Q = Decimal("0.0001")
_MONEY = Decimal("0.0001")
ZERO = Decimal(0)


class Shortfall(msgspec.Struct, frozen=True, kw_only=True):
    """The four parts of one order's shortfall, in money and in bps of its paper notional."""

    explicit_usd: Decimal
    delay_usd: Decimal
    execution_usd: Decimal
    opportunity_usd: Decimal
    explicit_bps: Decimal
    delay_bps: Decimal
    execution_bps: Decimal
    opportunity_bps: Decimal

    @property
    def total_usd(self) -> Decimal:
        """The whole shortfall in money."""
        return self.explicit_usd + self.delay_usd + self.execution_usd + self.opportunity_usd

    @property
    def total_bps(self) -> Decimal:
        """The whole shortfall in bps (the sum of the rounded parts)."""
        return self.explicit_bps + self.delay_bps + self.execution_bps + self.opportunity_bps


def sign(side: str) -> int:
    """Return +1 for a buy, -1 for a sell."""
    if side not in ("buy", "sell"):
        raise ValueError(f"expected side buy or sell, was {side!r}")
    return 1 if side == "buy" else -1


def perold(
    *,
    side: str,
    qty: int,
    decision_price: Decimal,
    submit_price: Decimal | None,
    filled_qty: int,
    fill_notional: Decimal,
    fees: Decimal,
    end_price: Decimal | None,
    benchmark: str = "decision",
) -> Shortfall:
    """Decompose one order's shortfall.

    `fill_notional` is sum(fill_qty * fill_px). `submit_price` None (never submitted, or not yet
    priced) means no delay can be told apart: the submit price is taken as the decision price.
    `end_price` marks the unfilled shares; None when every share filled (or they are not marked).
    """
    if qty <= 0 or decision_price <= 0:
        raise ValueError(f"expected qty > 0 and decision_price > 0, was {qty} / {decision_price}")
    if not 0 <= filled_qty <= qty:
        raise ValueError(f"expected 0 <= filled_qty <= qty, was {filled_qty} of {qty}")
    s = sign(side)
    submit = submit_price if submit_price is not None else decision_price
    paper = submit if benchmark == "submit" else decision_price
    delay = s * filled_qty * (submit - paper)
    execution = s * (fill_notional - filled_qty * submit)
    missed = qty - filled_qty
    opportunity = s * missed * (end_price - paper) if missed and end_price is not None else ZERO
    base = qty * paper

    def bps(usd: Decimal) -> Decimal:
        return (usd / base * BPS).quantize(_Q, rounding=ROUND_HALF_EVEN)

    def money(usd: Decimal) -> Decimal:
        return usd.quantize(_MONEY, rounding=ROUND_HALF_EVEN)

    return Shortfall(
        explicit_usd=money(fees),
        delay_usd=money(delay),
        execution_usd=money(execution),
        opportunity_usd=money(opportunity),
        explicit_bps=bps(fees),
        delay_bps=bps(delay),
        execution_bps=bps(execution),
        opportunity_bps=bps(opportunity),
    )


def signed_bps(side: str, reference: Decimal, price: Decimal) -> Decimal:
    """Return side * (price - reference) / reference in bps: positive = it cost the side money."""
    if reference <= 0:
        raise ValueError(f"expected a reference price > 0, was {reference}")
    return (sign(side) * (price - reference) / reference * BPS).quantize(_Q, rounding=ROUND_HALF_EVEN)


def spread_paid_bps(side: str, mid: Decimal, fill_vwap: Decimal) -> Decimal:
    """Return what the fills paid over the arrival mid in bps (seed 000 §H1): half the spread for
    a taker that filled at the touch, less for price improvement, negative for a maker. The mid
    here is the arrival benchmark (a bar's close), so it holds the price's move until the fills too."""
    return signed_bps(side, mid, fill_vwap)


def fill_latency_ms(submit_ts: int, first_fill_ts: int) -> int | None:
    """Return the time from the broker taking the order to its first fill; None when unknown."""
    if not submit_ts or not first_fill_ts:
        return None
    return max(first_fill_ts - submit_ts, 0) // 1_000_000


def quote_at_arrival(
    mid: Decimal, spread_bps: Decimal, is_proxy: bool, proxy_bps: Decimal
) -> tuple[Decimal | None, Decimal | None, Decimal, bool]:
    """Return (bid, ask, spread_bps, is_proxy) around the arrival mid.

    A quoted spread gives a bid and an ask half of it either side of the mid; without one the
    configured proxy spread stands in, flagged, and no bid or ask is claimed.
    """
    if is_proxy or spread_bps <= 0:
        return None, None, proxy_bps, True
    half = mid * spread_bps / BPS / 2
    return (mid - half).quantize(_Q), (mid + half).quantize(_Q), spread_bps, False
