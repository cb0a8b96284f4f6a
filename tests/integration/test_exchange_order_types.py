"""Every order type, class and time in force through the real alpaca-py TradingClient.

The exchange runs as users run it (`python -m services.exchange`, tests/support/exchange.py) on
real NATS and Postgres, with a frictionless cost model: no slippage, impact, latency or fees and
a 10 bps proxy spread (harness bars carry no quoted spread), so a taker buy pays
open * (1 + 5 bps) rounded up to the cent and a taker sell open * (1 - 5 bps) rounded down
(libs/fillsim/costs.py round_against: ticks round against the taker). Every expected price is
worked out by hand in a comment next to its assertion.

Bars are published in increasing time, one per minute, and each is awaited on the exchange's
event clock (GET /v2/clock) before the test reads what it did. Each scenario trades its own
symbol so orders never share a bar's participation cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import (
    OrderClass,
    OrderSide,
    OrderStatus,
    OrderType,
    PositionSide,
    QueryOrderStatus,
    TimeInForce,
)
from alpaca.trading.models import Order
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetCalendarRequest,
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)
from msgspec.structs import replace

from libs import sessions
from libs.bus import Bus
from libs.contracts.base import derive_id
from libs.contracts.marketdata import BarClosed
from services.exchange import handlers
from tests.support.exchange import (
    ACCOUNT,
    CLOSE_NS,
    EPOCH,
    KEY,
    MINUTE,
    SECRET,
    SESSION_DAY,
    bar_publisher,
    bar_time,
    call,
    eventually,
    exchange_env,
    expect_api_error,
    make_bar,
    running_exchange,
)
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(60)

D = Decimal
# the last 1-minute bar of SESSION_DAY closes at the close (16:00 ET): the closing auction
LAST = (CLOSE_NS - sessions.session_open_close(SESSION_DAY)[0]) // MINUTE
NEXT_DAY = date(2024, 3, 6)
FRICTIONLESS = {
    "KEEL_EXCHANGE_FIXED_SLIPPAGE_BPS": "0",
    "KEEL_EXCHANGE_VOL_SLIPPAGE_COEF": "0",
    "KEEL_EXCHANGE_IMPACT_COEF": "0",
    "KEEL_EXCHANGE_LATENCY_MS": "0",
    "KEEL_EXCHANGE_LATENCY_JITTER_MS": "0",
    "KEEL_EXCHANGE_SEC_FEE_PER_MILLION": "0",
    "KEEL_EXCHANGE_TAF_PER_SHARE": "0",
    "KEEL_EXCHANGE_MAX_PARTICIPATION": "1",
    "KEEL_EXCHANGE_PROXY_SPREAD_BPS": "10",
}


def bar(
    symbol: str,
    minute: int,
    open: str,
    *,
    high: str | None = None,
    low: str | None = None,
    close: str | None = None,
    volume: int = 1000,
    day: date = SESSION_DAY,
) -> BarClosed:
    """Return make_bar's bar (high/low open +/- 1 unless given), `minute` minutes after `day`'s open."""
    b = make_bar(symbol, minute, open, close=close, volume=volume)
    if day != SESSION_DAY:
        ts = sessions.session_open_close(day)[0] + minute * MINUTE
        b = replace(
            b,
            event_id=derive_id("it-bar", symbol, ts),
            correlation_id=derive_id("it-bar", ts),
            causation_id=derive_id("it-bar", ts),
            ts_event=ts,
            ts_init=ts,
            bar_start=ts - MINUTE,
            session=day.isoformat(),
        )
    return replace(b, high=D(high) if high else b.high, low=D(low) if low else b.low)


def at(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)


class Venue:
    """A running exchange, alpaca-py's TradingClient on it and the bus that feeds it bars."""

    def __init__(self, client: TradingClient, bus: Bus) -> None:
        self.client = client
        self.bus = bus

    async def bar(self, symbol: str, minute: int, open: str, **kw: object) -> BarClosed:
        """Publish a bar and wait until the exchange's event clock has reached it."""
        b = bar(symbol, minute, open, **kw)  # type: ignore[arg-type]
        await self.bus.publish(b)
        ts = at(b.ts_event)
        await eventually(lambda: self.client.get_clock().timestamp == ts)
        return b

    async def submit(self, request: OrderRequest) -> Order:
        return await call(self.client.submit_order, request)

    async def order(self, cid: str) -> Order:
        return await call(self.client.get_order_by_client_id, cid)

    async def by_id(self, order: Order, *, nested: bool = False) -> Order:
        return await call(self.client.get_order_by_id, order.id, GetOrderByIdRequest(nested=nested))

    async def refused(self, fn: Callable[[], object]) -> APIError:
        return await asyncio.to_thread(expect_api_error, fn)

    async def positions(self) -> dict[str, tuple[str, str]]:
        """Return symbol -> (qty, avg_entry_price) of every open position."""
        return {p.symbol: (p.qty, p.avg_entry_price) for p in await call(self.client.get_all_positions)}


@asynccontextmanager
async def venue(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path, **extra: str
) -> AsyncIterator[Venue]:
    env = await exchange_env(namespace, nats_url, database_url, **{**FRICTIONLESS, **extra})
    async with bar_publisher(namespace, nats_url) as bus, running_exchange(env, tmp_path / "exchange.log") as exchange:
        yield Venue(TradingClient(KEY, SECRET, paper=True, url_override=exchange.url), bus)


def buy(symbol: str, cid: str, qty: int = 10, tif: TimeInForce = TimeInForce.DAY, **kw: object) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=tif, client_order_id=cid, **kw)


def limit(
    symbol: str,
    cid: str,
    price: float,
    side: OrderSide = OrderSide.BUY,
    tif: TimeInForce = TimeInForce.GTC,
    qty: int = 10,
) -> LimitOrderRequest:
    return LimitOrderRequest(
        symbol=symbol, qty=qty, side=side, time_in_force=tif, limit_price=price, client_order_id=cid
    )


def filled(order: Order) -> tuple[OrderStatus, str | float | None, Decimal | None]:
    return order.status, order.filled_qty, D(str(order.filled_avg_price)) if order.filled_avg_price else None


# --- 1. simple order types --------------------------------------------------------------------


async def test_order_types_when_bars_reach_them_then_each_fills_at_its_documented_price(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    async with venue(namespace, nats_url, database_url, tmp_path) as v:
        # marks for the trailing stops (a trailing stop starts from the symbol's last close)
        await v.bar("TRP", 1, "100")
        await v.bar("TPC", 2, "100")

        mkt = await v.submit(buy("MKT", "mkt"))
        assert (mkt.type, mkt.order_class, mkt.status) == (OrderType.MARKET, OrderClass.SIMPLE, OrderStatus.NEW)
        await v.submit(limit("LMT", "lmt-rest", 99.00))
        await v.submit(limit("LMX", "lmt-take", 101.00, tif=TimeInForce.DAY))
        stp = await v.submit(
            StopOrderRequest(
                symbol="STP",
                qty=10,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.GTC,
                stop_price=101.00,
                client_order_id="stp",
            )
        )
        assert (stp.type, D(stp.stop_price), stp.limit_price) == (OrderType.STOP, D("101"), None)
        await v.submit(
            StopOrderRequest(
                symbol="STG",
                qty=10,
                side=OrderSide.SELL,
                time_in_force=TimeInForce.DAY,
                stop_price=99.00,
                client_order_id="stp-gap",
            )
        )
        stl = await v.submit(
            StopLimitOrderRequest(
                symbol="STL",
                qty=10,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.GTC,
                stop_price=101.00,
                limit_price=101.00,
                client_order_id="stl",
            )
        )
        assert (stl.type, D(stl.stop_price), D(stl.limit_price)) == (OrderType.STOP_LIMIT, D("101"), D("101"))
        trp = await v.submit(
            TrailingStopOrderRequest(
                symbol="TRP",
                qty=10,
                side=OrderSide.SELL,
                time_in_force=TimeInForce.GTC,
                trail_price=1.00,
                client_order_id="trail-price",
            )
        )
        # high-water mark = TRP's last close 100; stop = 100 - 1.00 = 99.00
        assert (trp.type, D(trp.trail_price), trp.trail_percent) == (OrderType.TRAILING_STOP, D(1), None)
        assert (D(trp.hwm), D(trp.stop_price)) == (D("100"), D("99.00"))
        tpc = await v.submit(
            TrailingStopOrderRequest(
                symbol="TPC",
                qty=10,
                side=OrderSide.SELL,
                time_in_force=TimeInForce.GTC,
                trail_percent=2.0,
                client_order_id="trail-percent",
            )
        )
        # stop = 100 - 100 * 2% = 98.00
        assert (D(tpc.trail_percent), tpc.trail_price) == (D(2), None)
        assert (D(tpc.hwm), D(tpc.stop_price)) == (D("100"), D("98.00"))

        # market: fills on the next bar as a taker at open + half the spread
        await v.bar("MKT", 3, "100")
        done = await v.by_id(mkt)
        assert filled(done) == (OrderStatus.FILLED, "10", D("100.05"))  # 100 * 1.0005 = 100.05
        assert done.filled_at == bar_time(3)

        # resting limit: a bar that only touches it (low == 99.00) is not enough
        await v.bar("LMT", 4, "100", low="99.00")
        assert filled(await v.order("lmt-rest")) == (OrderStatus.NEW, "0", None)
        # ... a bar trading through it (low 98.99 < 99.00) fills it as maker at its own price
        await v.bar("LMT", 5, "100", low="98.99")
        assert filled(await v.order("lmt-rest")) == (OrderStatus.FILLED, "10", D("99.00"))

        # marketable limit: a taker at 100 * 1.0005 = 100.05, under its 101.00 limit
        await v.bar("LMX", 6, "100")
        assert filled(await v.order("lmt-take")) == (OrderStatus.FILLED, "10", D("100.05"))

        # stop buy 101.00: a high of 100.90 does not reach it
        await v.bar("STP", 7, "100", high="100.90")
        assert filled(await v.by_id(stp)) == (OrderStatus.NEW, "0", None)
        # high 101.50 reaches it: a taker from the stop, 101.00 * 1.0005 = 101.0505 -> up 101.06
        await v.bar("STP", 8, "100.50", high="101.50")
        assert filled(await v.by_id(stp)) == (OrderStatus.FILLED, "10", D("101.06"))

        # stop sell 99.00, bar gaps down to open 98.00: a taker from the open, 98 * 0.9995 = 97.951 -> down 97.95
        await v.bar("STG", 9, "98.00")
        assert filled(await v.order("stp-gap")) == (OrderStatus.FILLED, "10", D("97.95"))

        # stop_limit buy stop 101 / limit 101: gaps to 102 -> triggered at the open, but the taker
        # price 102 * 1.0005 = 102.051 -> 102.06 is above the limit and so is the mid: it rests
        await v.bar("STL", 10, "102.00", high="102.50", low="101.50")
        assert filled(await v.by_id(stl)) == (OrderStatus.NEW, "0", None)
        # triggered already; not marketable (101.50 * 1.0005 -> 101.56 > 101, mid 101.50 > 101),
        # but the bar trades through the limit (low 100.80 < 101): a maker fill at 101.00
        await v.bar("STL", 11, "101.50", low="100.80")
        assert filled(await v.by_id(stl)) == (OrderStatus.FILLED, "10", D("101.00"))

        # trailing stop (trail_price 1.00): the rising bar stays above the stop 99 (low 100.20),
        # then the mark moves to its high 103.00 and the stop to 103.00 - 1.00 = 102.00
        await v.bar("TRP", 12, "100.50", high="103.00", low="100.20")
        moved = await v.by_id(trp)
        assert (moved.status, D(moved.hwm), D(moved.stop_price)) == (OrderStatus.NEW, D("103.00"), D("102.00"))
        # the falling bar's low 101.50 reaches 102.00: a taker from the stop,
        # 102 * 0.9995 = 101.949 -> down 101.94
        await v.bar("TRP", 13, "102.50", high="102.60", low="101.50")
        assert filled(await v.order("trail-price")) == (OrderStatus.FILLED, "10", D("101.94"))

        # trailing stop (trail_percent 2): the rising bar's low 100.20 stays above 98.00; then
        # hwm = 105.00 and stop = 105 - 105 * 2% = 102.90
        await v.bar("TPC", 14, "100.50", high="105.00", low="100.20")
        moved = await v.by_id(tpc)
        assert (moved.status, D(moved.hwm), D(moved.stop_price)) == (OrderStatus.NEW, D("105.00"), D("102.90"))
        # the falling bar's low 102.00 reaches 102.90: 102.90 * 0.9995 = 102.84855 -> down 102.84
        await v.bar("TPC", 15, "104.00", high="104.20", low="102.00")
        assert filled(await v.order("trail-percent")) == (OrderStatus.FILLED, "10", D("102.84"))

        assert await v.positions() == {
            "MKT": ("10", "100.05"),
            "LMT": ("10", "99"),
            "LMX": ("10", "100.05"),
            "STP": ("10", "101.06"),
            "STG": ("-10", "97.95"),
            "STL": ("10", "101"),
            "TRP": ("-10", "101.94"),
            "TPC": ("-10", "102.84"),
        }


# --- 2. time in force -------------------------------------------------------------------------


async def test_time_in_force_when_sessions_open_and_close_then_each_lives_as_alpaca_documents(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    async with venue(namespace, nats_url, database_url, tmp_path) as v:
        # opg before the open (no bar yet: the event clock reads 1970) is accepted ...
        assert (await call(v.client.get_clock)).timestamp == EPOCH
        opg = await v.submit(buy("OPG", "opg", tif=TimeInForce.OPG))
        assert (opg.time_in_force, opg.status) == (TimeInForce.OPG, OrderStatus.NEW)
        # ... and fills in the opening auction: the session's first bar's open, no spread
        await v.bar("OPG", 1, "100.37")
        assert filled(await v.by_id(opg)) == (OrderStatus.FILLED, "10", D("100.37"))

        # during the session opg is refused
        late_opg = await v.refused(lambda: v.client.submit_order(buy("OPG", "opg-late", tif=TimeInForce.OPG)))
        assert (late_opg.status_code, late_opg.code) == (422, 42210000)
        assert "opg" in late_opg.message

        day = await v.submit(limit("DAY", "day", 90.00, tif=TimeInForce.DAY))
        assert day.expires_at == at(CLOSE_NS)
        gtc = await v.submit(limit("GTC", "gtc", 90.00, tif=TimeInForce.GTC))
        # gtc: at the close 90 days on (2024-03-05 + 90 days = Monday 2024-06-03)
        assert gtc.expires_at == at(sessions.session_open_close(date(2024, 6, 3))[1])
        await v.submit(limit("IOC", "ioc", 99.50, tif=TimeInForce.IOC))
        await v.submit(buy("FOK", "fok", tif=TimeInForce.FOK))
        await v.submit(buy("FOKB", "fok-big", qty=1500, tif=TimeInForce.FOK))
        cls = await v.submit(buy("CLS", "cls", tif=TimeInForce.CLS))

        # ioc: a buy limit 99.50 not marketable (mid 100, 100 * 1.0005 = 100.05 > 99.50) is
        # canceled, although the bar trades through it (low 99): an ioc never rests on the book
        await v.bar("IOC", 2, "100")
        ioc = await v.order("ioc")
        assert filled(ioc) == (OrderStatus.CANCELED, "0", None)
        assert ioc.canceled_at == bar_time(2)
        # fok: all 10 fit the bar's 1000 shares: filled at 100 * 1.0005 = 100.05
        await v.bar("FOK", 3, "100")
        assert filled(await v.order("fok")) == (OrderStatus.FILLED, "10", D("100.05"))
        # fok: 1500 do not fit 1000 * 100% participation: nothing fills
        await v.bar("FOKB", 4, "100", volume=1000)
        assert filled(await v.order("fok-big")) == (OrderStatus.CANCELED, "0", None)

        # day and gtc limits far below the market keep working through the session
        await v.bar("DAY", 5, "100")
        await v.bar("GTC", 6, "100")
        # cls waits through intraday bars
        await v.bar("CLS", 7, "100")
        assert filled(await v.by_id(cls)) == (OrderStatus.NEW, "0", None)

        # cls is refused within 10 minutes of the close (15:55 here)
        await v.bar("LATE", LAST - 5, "100")
        late_cls = await v.refused(lambda: v.client.submit_order(buy("CLS", "cls-late", tif=TimeInForce.CLS)))
        assert (late_cls.status_code, late_cls.code) == (422, 42210000)
        assert "cls" in late_cls.message

        # the last bar of the session (16:00): cls fills at its close, the closing auction price
        await v.bar("CLS", LAST, "100", close="100.42")
        assert filled(await v.by_id(cls)) == (OrderStatus.FILLED, "10", D("100.42"))
        assert (await v.by_id(day)).status == OrderStatus.NEW  # the session has not closed yet

        # the next session's first bar (of another symbol): the day order expired at the close
        await v.bar("NEXT", 1, "50", day=NEXT_DAY)
        expired = await v.by_id(day)
        assert (expired.status, expired.expired_at, expired.filled_qty) == (OrderStatus.EXPIRED, at(CLOSE_NS), "0")
        assert (await v.by_id(gtc)).status == OrderStatus.NEW

        assert await v.positions() == {
            "OPG": ("10", "100.37"),
            "FOK": ("10", "100.05"),
            "CLS": ("10", "100.42"),
        }


# --- 3. order classes -------------------------------------------------------------------------


async def test_order_classes_when_entries_and_exits_fill_then_legs_activate_and_cancel_each_other(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    async with venue(namespace, nats_url, database_url, tmp_path) as v:
        # bracket: base price = BRK's mark 100; take-profit 103 >= 100.01, stop-loss 97 <= 99.99
        await v.bar("BRK", 1, "100")
        entry = await v.submit(
            buy(
                "BRK",
                "bracket",
                order_class=OrderClass.BRACKET,
                take_profit=TakeProfitRequest(limit_price=103.00),
                stop_loss=StopLossRequest(stop_price=97.00),
            )
        )
        assert entry.order_class == OrderClass.BRACKET and entry.legs is not None
        tp, sl = entry.legs
        assert [(leg.status, leg.type, leg.side) for leg in entry.legs] == [
            (OrderStatus.HELD, OrderType.LIMIT, OrderSide.SELL),
            (OrderStatus.HELD, OrderType.STOP, OrderSide.SELL),
        ]
        assert (D(tp.limit_price), D(sl.stop_price)) == (D("103.00"), D("97.00"))

        # the entry fills at 100 * 1.0005 = 100.05; its legs work: as Alpaca shows them, the
        # take-profit new (it holds the shares), the stop-loss `held` until its trigger
        await v.bar("BRK", 2, "100")
        nested = await v.by_id(entry, nested=True)
        assert filled(nested) == (OrderStatus.FILLED, "10", D("100.05"))
        assert nested.legs is not None
        assert [leg.status for leg in nested.legs] == [OrderStatus.NEW, OrderStatus.HELD]

        # a bar through the take-profit (mid 102: a sell taker would get 102 * 0.9995 -> 101.94 <
        # 103; high 103.50 > 103.00) fills it as maker at 103.00; the
        # stop-loss (low 101.50 > 97) is canceled with it, and the position is flat
        await v.bar("BRK", 3, "102", high="103.50", low="101.50")
        assert filled(await v.by_id(tp)) == (OrderStatus.FILLED, "10", D("103.00"))
        assert (await v.by_id(sl)).status == OrderStatus.CANCELED
        assert "BRK" not in await v.positions()

        # oco on an existing long of 10 (bought at 100 * 1.0005 = 100.05)
        await v.bar("OCO", 4, "100")
        await v.submit(buy("OCO", "oco-long"))
        await v.bar("OCO", 5, "100")
        assert (await v.positions())["OCO"] == ("10", "100.05")
        oco = await v.submit(
            LimitOrderRequest(
                symbol="OCO",
                qty=10,
                side=OrderSide.SELL,
                time_in_force=TimeInForce.GTC,
                order_class=OrderClass.OCO,
                limit_price=105.00,
                take_profit=TakeProfitRequest(limit_price=105.00),
                stop_loss=StopLossRequest(stop_price=98.00),
                client_order_id="oco",
            )
        )
        assert oco.order_class == OrderClass.OCO and oco.legs is not None
        (stop_leg,) = oco.legs
        # both work at once (the stop-loss reads held: the take-profit holds the shares)
        assert (oco.status, stop_leg.status, stop_leg.type) == (OrderStatus.NEW, OrderStatus.HELD, OrderType.STOP)
        # the low 97.50 reaches the stop 98.00 (open 99 above it): a taker sell from the stop,
        # 98 * 0.9995 = 97.951 -> down 97.95; the take-profit (high 99.50 < 105) is canceled
        await v.bar("OCO", 6, "99", high="99.50", low="97.50")
        assert filled(await v.by_id(stop_leg)) == (OrderStatus.FILLED, "10", D("97.95"))
        assert (await v.by_id(oco)).status == OrderStatus.CANCELED
        assert "OCO" not in await v.positions()

        # oto: one stop-loss leg, held until the entry fills
        await v.bar("OTO", 7, "100")
        oto = await v.submit(buy("OTO", "oto", order_class=OrderClass.OTO, stop_loss=StopLossRequest(stop_price=95.00)))
        assert oto.legs is not None
        (oto_leg,) = oto.legs
        assert (oto.order_class, oto_leg.status, oto_leg.type) == (OrderClass.OTO, OrderStatus.HELD, OrderType.STOP)
        await v.bar("OTO", 8, "100")
        assert filled(await v.by_id(oto)) == (OrderStatus.FILLED, "10", D("100.05"))
        assert (await v.by_id(oto_leg)).status == OrderStatus.HELD  # armed, waiting for its trigger
        # low 94.50 reaches the stop 95.00: 95 * 0.9995 = 94.9525 -> down 94.95
        await v.bar("OTO", 9, "96", low="94.50")
        assert filled(await v.by_id(oto_leg)) == (OrderStatus.FILLED, "10", D("94.95"))

        # Alpaca's documented OCO body carries the exit limit only in take_profit.limit_price
        # (no top-level limit_price; alpaca-py's LimitOrderRequest allows exactly that for oco)
        await v.bar("OCO2", 10, "100")
        await v.submit(buy("OCO2", "oco2-long"))
        await v.bar("OCO2", 11, "100")
        oco_body = LimitOrderRequest(
            symbol="OCO2",
            qty=10,
            side=OrderSide.SELL,
            time_in_force=TimeInForce.GTC,
            order_class=OrderClass.OCO,
            take_profit=TakeProfitRequest(limit_price=105.00),
            stop_loss=StopLossRequest(stop_price=98.00),
            client_order_id="oco2",
        )
        assert "limit_price" not in oco_body.to_request_fields()  # what alpaca-py sends
        documented = await v.submit(oco_body)
        assert (documented.status, D(documented.limit_price)) == (OrderStatus.NEW, D("105.00"))


# --- 4. replace, cancel, close, calendar, clock ----------------------------------------------


async def test_replace_cancel_close_calendar_and_clock_when_called_then_answer_like_alpaca(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    async with venue(namespace, nats_url, database_url, tmp_path) as v:
        await v.bar("RPL", 1, "100")
        clock = await call(v.client.get_clock)
        assert (clock.timestamp, clock.is_open) == (bar_time(1), True)
        assert clock.next_close == at(CLOSE_NS)
        assert clock.next_open == datetime(2024, 3, 6, 14, 30, tzinfo=UTC)  # 09:30 EST the next day

        # replace: the old order reads replaced and points at the new one, which points back
        old = await v.submit(limit("RPL", "rpl-1", 95.00))
        new = await call(
            v.client.replace_order_by_id,
            old.id,
            ReplaceOrderRequest(qty=5, limit_price=96.00, client_order_id="rpl-2"),
        )
        assert (new.client_order_id, new.replaces, new.qty, D(new.limit_price), new.status) == (
            "rpl-2",
            old.id,
            "5",
            D("96.00"),
            OrderStatus.NEW,
        )
        closed = await v.by_id(old)
        assert (closed.status, closed.replaced_by, closed.replaced_at) == (OrderStatus.REPLACED, new.id, bar_time(1))
        # a bar through 96 (low 95.50, mid 97 above the limit) fills the replacement as maker at 96
        await v.bar("RPL", 2, "97", high="98", low="95.50")
        assert filled(await v.by_id(new)) == (OrderStatus.FILLED, "5", D("96.00"))
        assert (await v.by_id(old)).filled_qty == "0"

        # cancel one
        one = await v.submit(limit("CXL", "cxl", 90.00))
        assert await call(v.client.cancel_order_by_id, one.id) is None
        canceled = await v.by_id(one)
        assert (canceled.status, canceled.canceled_at) == (OrderStatus.CANCELED, bar_time(2))

        # cancel all: one 200 answer per open order
        a = await v.submit(limit("CXA", "cxa", 90.00))
        b = await v.submit(limit("CXB", "cxb", 90.00, tif=TimeInForce.DAY))
        answers = await call(v.client.cancel_orders)
        assert sorted((str(r.id), r.status) for r in answers) == sorted([(str(a.id), 200), (str(b.id), 200)])
        assert await call(v.client.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []
        assert [(await v.by_id(o)).status for o in (a, b)] == [OrderStatus.CANCELED, OrderStatus.CANCELED]

        # close a position by percentage, then by qty: 100 bought at 100 * 1.0005 = 100.05
        await v.submit(buy("CLP", "clp-buy", qty=100))
        await v.bar("CLP", 3, "100")
        by_pct = await call(v.client.close_position, "CLP", ClosePositionRequest(percentage="40"))
        assert (by_pct.side, by_pct.type, by_pct.qty) == (OrderSide.SELL, OrderType.MARKET, "40")  # 40% of 100
        by_qty = await call(v.client.close_position, "CLP", ClosePositionRequest(qty="10"))
        assert (by_qty.side, by_qty.qty) == (OrderSide.SELL, "10")
        position = await call(v.client.get_open_position, "CLP")
        assert (position.qty, position.qty_available, position.side) == ("100", "50", PositionSide.LONG)
        # both sell at 101 * 0.9995 = 100.9495 -> down 100.94
        await v.bar("CLP", 4, "101")
        assert filled(await v.by_id(by_pct)) == (OrderStatus.FILLED, "40", D("100.94"))
        assert filled(await v.by_id(by_qty)) == (OrderStatus.FILLED, "10", D("100.94"))
        assert await v.positions() == {"CLP": ("50", "100.05"), "RPL": ("5", "96")}

        # close all, canceling open orders first: one 200 answer per position, in symbol order
        working = await v.submit(limit("RPL", "rpl-open", 90.00))
        closing = await call(v.client.close_all_positions, True)
        assert [(r.symbol, r.status) for r in closing] == [("CLP", 200), ("RPL", 200)]
        assert [(r.body.side, r.body.qty) for r in closing if isinstance(r.body, Order)] == [
            (OrderSide.SELL, "50"),
            (OrderSide.SELL, "5"),
        ]
        assert all(r.order_id == r.body.id for r in closing if isinstance(r.body, Order))
        assert (await v.by_id(working)).status == OrderStatus.CANCELED
        await v.bar("RPL", 5, "100")
        await v.bar("CLP", 6, "100")
        assert await v.positions() == {}
        # cash: 100000 - 5 * 96 (RPL) - 100 * 100.05 (CLP) + 50 * 100.94 (partial closes)
        #       + 5 * 99.95 + 50 * 99.95 (close all at 100 * 0.9995, on the tick)
        #     = 100000 - 480 - 10005 + 5047 + 499.75 + 4997.50 = 100059.25
        assert (await call(v.client.get_account)).cash == "100059.25"

        # calendar: the week of 2024-03-04 has five sessions 09:30-16:00; 2024-07-03 closes at 13:00
        week = await call(v.client.get_calendar, GetCalendarRequest(start=date(2024, 3, 4), end=date(2024, 3, 8)))
        assert [(c.date, c.open.time().isoformat(), c.close.time().isoformat()) for c in week] == [
            (date(2024, 3, d), "09:30:00", "16:00:00") for d in range(4, 9)
        ]
        (early,) = await call(v.client.get_calendar, GetCalendarRequest(start=date(2024, 7, 3), end=date(2024, 7, 3)))
        assert (early.open, early.close) == (datetime(2024, 7, 3, 9, 30), datetime(2024, 7, 3, 13, 0))


# --- 5. partial fills -------------------------------------------------------------------------


async def test_partial_fills_when_participation_is_ten_percent_then_fills_sum_to_the_order_qty(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    async with venue(namespace, nats_url, database_url, tmp_path, KEEL_EXCHANGE_MAX_PARTICIPATION="0.1") as v:
        await v.bar("PRT", 1, "100")
        order = await v.submit(buy("PRT", "partial", qty=250))
        await v.submit(buy("IOCP", "ioc-partial", qty=150, tif=TimeInForce.IOC))

        # each bar of volume 1000 takes at most 10% = 100 shares, at open * 1.0005 rounded up
        await v.bar("PRT", 2, "100")  # 100 @ 100.05
        assert filled(await v.by_id(order)) == (OrderStatus.PARTIALLY_FILLED, "100", D("100.05"))
        await v.bar("PRT", 3, "101")  # 100 @ 101 * 1.0005 = 101.0505 -> 101.06
        # (100 * 100.05 + 100 * 101.06) / 200 = 20111 / 200 = 100.555
        assert filled(await v.by_id(order)) == (OrderStatus.PARTIALLY_FILLED, "200", D("100.555"))
        await v.bar("PRT", 4, "102")  # the last 50 @ 102 * 1.0005 = 102.051 -> 102.06
        fills = [(100, D("100.05")), (100, D("101.06")), (50, D("102.06"))]
        assert sum(q for q, _ in fills) == 250
        average = sum((q * p for q, p in fills), D(0)) / 250  # 25214 / 250 = 100.856
        done = await v.by_id(order)
        assert filled(done) == (OrderStatus.FILLED, "250", average)
        assert done.filled_at == bar_time(4)
        assert (await v.positions())["PRT"] == ("250", "100.856")

        # ioc takes what the first bar allows (100 of 150 @ 100.05) and cancels the rest
        await v.bar("IOCP", 5, "100")
        assert filled(await v.order("ioc-partial")) == (OrderStatus.CANCELED, "100", D("100.05"))
        assert (await v.positions())["IOCP"] == ("100", "100.05")


# --- 6. rejections ----------------------------------------------------------------------------


async def test_rejections_when_orders_break_alpacas_rules_then_alpaca_codes_and_messages(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    async with venue(namespace, nats_url, database_url, tmp_path, KEEL_EXCHANGE_ALLOW_SHORTING="false") as v:
        await v.bar("REJ", 1, "100")

        first = await v.submit(limit("REJ", "dup-1", 90.00, qty=1))
        assert first.id is not None and str(first.id) == handlers.order_id_for(ACCOUNT, "dup-1")
        duplicate = await v.refused(lambda: v.client.submit_order(limit("REJ", "dup-1", 90.00, qty=1)))
        assert (duplicate.status_code, duplicate.code, duplicate.message) == (
            422,
            40010001,
            "client_order_id must be unique",
        )

        # 3000 * 100 = 300000 > buying power 2 * 100000 - 90 (the open limit)
        poor = await v.refused(lambda: v.client.submit_order(buy("REJ", "too-big", qty=3000)))
        assert (poor.status_code, poor.code, poor.message) == (403, 40310000, "insufficient buying power")

        short = await v.refused(
            lambda: v.client.submit_order(
                MarketOrderRequest(symbol="REJ", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY)
            )
        )
        assert (short.status_code, short.code, short.message) == (403, 40310000, "account is not allowed to short")

        # alpaca-py sends the float as it is (no rounding): the exchange must refuse it
        sub_penny = limit("REJ", "sub-penny", 100.001, qty=1)
        assert sub_penny.to_request_fields()["limit_price"] == 100.001
        tick = await v.refused(lambda: v.client.submit_order(sub_penny))
        assert (tick.status_code, tick.code) == (422, 42210000)
        assert "sub-penny increment" in tick.message

        # closing more than the position holds
        await v.submit(buy("REJ", "rej-long"))
        await v.bar("REJ", 2, "100")
        too_much = await v.refused(lambda: v.client.close_position("REJ", ClosePositionRequest(qty="20")))
        assert (too_much.status_code, too_much.code) == (403, 40310000)
        assert too_much.message == "insufficient qty available for order (requested: 20, available: 10)"
        # a closing sell is no short: allowed with shorting off
        part = await call(v.client.close_position, "REJ", ClosePositionRequest(qty="4"))
        assert (part.side, part.qty, part.status) == (OrderSide.SELL, "4", OrderStatus.NEW)
        # an order never reverses a position: the 4 shares the close holds are not available
        flip = await v.refused(
            lambda: v.client.submit_order(
                MarketOrderRequest(symbol="REJ", qty=7, side=OrderSide.SELL, time_in_force=TimeInForce.DAY)
            )
        )
        assert (flip.status_code, flip.code) == (403, 40310000)
        assert flip.message == "insufficient qty available for order (requested: 7, available: 6)"
