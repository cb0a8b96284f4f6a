"""Risk state: sleeve targets, the OMS's view of each symbol and intents in flight."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.contracts.tca import CostModelUpdated


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    """An intent risk emitted that the OMS had not yet reported seeing."""

    index: int
    qty: int  # signed


class SymbolRisk(msgspec.Struct, frozen=True, kw_only=True):
    """Everything risk knows about one symbol."""

    sleeves: dict[str, int] = {}
    last_price: Decimal = Decimal(0)
    position: int = 0
    open_order_qty: int = 0
    open_buy_qty: int = 0  # open_order_qty by side, as the OMS reports it
    open_sell_qty: int = 0
    oms_intents_seen: int = 0
    emitted: int = 0
    in_flight: tuple[InFlight, ...] = ()

    def expected_position(self) -> int:
        """Return the position once every working and in-flight order fills."""
        return self.position + self.open_order_qty + sum(f.qty for f in self.in_flight)

    def working_by_side(self) -> tuple[int, int]:
        """Return the shares working and in flight to buy and to sell (both >= 0)."""
        buys, sells = self.open_buy_qty, self.open_sell_qty
        if not buys and not sells:
            # a report of an OMS older than the split: the net quantity is all there is
            buys, sells = max(self.open_order_qty, 0), max(-self.open_order_qty, 0)
        buys += sum(f.qty for f in self.in_flight if f.qty > 0)
        sells -= sum(f.qty for f in self.in_flight if f.qty < 0)
        return buys, sells


class RiskState(msgspec.Struct, frozen=True, kw_only=True):
    """All symbols, and the cost model the cost gate prices entries with."""

    symbols: dict[str, SymbolRisk] = {}
    last_watermark: int = 0
    # the lockstep's other inputs: the OMS's FillsDone (positions hold every order change the
    # exchange made up to here) and TCA's watermark (every model TCA made up to here is adopted)
    fills_done: int = 0
    tca_watermark: int = 0
    cost_model: CostModelUpdated | None = None  # TCA's latest calibration (None: none seen yet)
    first_session: str = ""  # the first session risk decided in (a model is due after it)
    stale_alerted: str = ""  # the session TCA_STALE was last raised for (once a session)
