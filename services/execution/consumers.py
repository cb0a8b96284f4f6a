"""Edges of execution: approved decisions become broker orders; operator cancel-all; the
broker's trade_updates frames become reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import msgspec

from libs.bus import Bus, ConsumerSpec
from libs.bus.consumer import Inbound, OnBatch
from libs.contracts import subjects as sj
from libs.contracts.base import derive_id
from libs.contracts.control import CancelAllOrders, HaltTrading
from libs.contracts.oms import CancelRequested, OmsEvent, OrderLookupRequested, PretradeDecision
from libs.contracts.ops import FillsDone, Watermark
from libs.decide import Ctx
from libs.errors import DependencyFailed, Throttled, calling, dependency_of
from libs.errors.breakers import Breakers, circuit_open_code
from libs.errors.handle import ErrorHandler, publish_halt
from libs.errors.ratelimit import BROKER_LOCKED, RateLimiter
from libs.obs import tracing
from libs.runtime.crashpoints import crash_point
from libs.runtime.processor import Processor
from services.execution import handlers
from services.execution import state as st
from services.execution.broker import AlpacaBroker
from services.oms.consumers import decode_control

log = logging.getLogger(__name__)
_decision_decoder = msgspec.json.Decoder(OmsEvent | Watermark | FillsDone)
_fills_done_decoder = msgspec.json.Decoder(FillsDone)
# how long an order waits for the broker to confirm the cancel of exit legs holding its shares
LEGS_CANCEL_WAIT_SEC = 5.0
MINUTE_NS = 60_000_000_000


class Live:
    """What execution keeps in memory only: the orders with a broker call under way, the stream
    frames that arrived for them meanwhile, and the poller's wake-up."""

    def __init__(self) -> None:
        self.inflight: set[str] = set()
        self.deferred: dict[str, list[st.BrokerOrder]] = defaultdict(list)
        self.wake = asyncio.Event()
        self.looked_up: dict[str, float] = {}  # order -> when the poller last asked for it alone
        # the backoff jitter of the poller's retried reads: seeded, never the global RNG
        self.jitter = random.Random(int(derive_id("execution", "poll-jitter"), 16))

    def due(self, cid: str, every: float) -> bool:
        """Tell whether an order may be asked for alone now (at most once per `every` seconds)."""
        now = time.monotonic()  # operational pacing, never a decision
        if now - self.looked_up.get(cid, float("-inf")) < every:
            return False
        self.looked_up[cid] = now
        return True

    @contextlib.asynccontextmanager
    async def calling(self, cid: str) -> AsyncIterator[None]:
        """Hold an order for one broker call (submit or lookup); one call per order at a time."""
        while cid in self.inflight:
            await asyncio.sleep(0.01)
        self.inflight.add(cid)
        try:
            yield
        finally:
            self.inflight.discard(cid)


async def on_trade_update(processor: Processor, live: Live, bo: st.BrokerOrder) -> None:
    """Apply one trade_updates frame through the same handler as a poll.

    A frame for an order whose call is under way waits for the call's outcome (so the order is
    never adopted twice or before its submit is answered); a frame for an order of unknown status
    only wakes the poller, whose GET by client_order_id is the one way such an order is resolved.
    """
    cid = processor.state.aliases.get(bo.client_order_id, bo.client_order_id)  # an exit leg: keel's id
    order = processor.state.orders.get(cid)
    if order is None:
        return  # not ours, finished already, or a leg not yet adopted (the poll adopts it)
    if cid in live.inflight:
        live.deferred[cid].append(bo)
        return
    if order.broker_status in st.PRE_ACK:
        live.wake.set()
        return
    ctx = processor.ctx()
    with tracing.span("execution trade update", parent_headers={sj.H_TRACEPARENT: order.traceparent}):
        await processor.commit(lambda s: handlers.on_broker_order(s, cid, bo, ctx))


async def after_call(processor: Processor, live: Live, cid: str) -> None:
    """Apply the frames that waited for an order's broker call."""
    for bo in live.deferred.pop(cid, []):
        await on_trade_update(processor, live, bo)


SUBMIT = "broker_submit"  # the dependency of every order sent
READ_BACK = "broker_open_orders"  # the dependency of reading an order back (as `broker.order` says it)


async def read_holdings(broker: AlpacaBroker, errors: ErrorHandler, when: str) -> st.Holdings | None:
    """Read the broker's account, positions and open orders; None (said) when it cannot answer."""
    try:
        return await calling("broker_positions", broker.snapshot())
    except Exception as e:  # handled: no snapshot now; the OMS's account view ages meanwhile
        dependency = e.dependency if isinstance(e, DependencyFailed) else dependency_of(e, "broker_positions")
        await errors.handle(e, dependency=dependency, context=f"broker snapshot at {when}", key=f"snapshot:{when}")
        return None


async def startup_snapshot(processor: Processor, broker: AlpacaBroker, errors: ErrorHandler) -> None:
    """Send the OMS what the broker holds as execution starts (its start-up reconciliation)."""
    held = await read_holdings(broker, errors, "start")
    if held is not None:
        ctx = processor.ctx()
        await processor.commit(lambda s: handlers.broker_snapshot(s, "startup", held, s.last_watermark, ctx))


async def resend_allowed(bus: Bus, breakers: Breakers) -> bool:
    """Tell whether an order the broker proved absent may be sent again now.

    Not while trading is halted, and not while broker_submit's breaker is open (the venue is
    failing: another POST would only add to it); the order stays unknown and is asked about again.
    """
    halt = await bus.halt_state()
    if halt is not None and halt.halted:
        return False
    return not await breakers.open_reason(SUBMIT)


async def halt_if_needed(bus: Bus, processor: Processor, cid: str, outcome: handlers.Outcome | None) -> None:
    """Halt trading everywhere when the broker's refusal means no order can go (AUTH_HALT).

    Published as an operator would (`keel.ctl.kill`), so the OMS records it in the halt flag and
    every service stops new orders; a resume needs an operator and a reason.
    """
    if not isinstance(outcome, handlers.Rejected) or not outcome.halt:
        return
    reason = f"{outcome.halt}: the broker refused {cid} ({outcome.code}); check the keys and the account"
    await publish_halt(bus, processor.service, reason, f"{outcome.halt}:{cid}")
    if processor.metrics:
        processor.metrics.decision("halt", outcome.halt)


async def count_submit(
    processor: Processor, breakers: Breakers, errors: ErrorHandler, outcome: handlers.Outcome | None
) -> None:
    """Count a failed broker call against broker_submit's breaker; alert when it opens."""
    if not isinstance(outcome, handlers.Unknown) or not outcome.failure:
        return
    state, opened = await breakers.record_failure(SUBMIT, outcome.failure, retry_after_sec=outcome.retry_after_sec)
    if opened:
        await errors.circuit_opened(state)


async def health(breakers: Breakers, limiter: RateLimiter | None) -> st.Health:
    """Read what a cycle summary says of the broker: open breakers, and until when it is locked.

    Locked: by the account's rate limit (a Retry-After) or by an open broker breaker, whichever
    ends last.
    """
    states = await breakers.states()
    now = breakers.now_ns()
    open_ = {dep: s.reason or "open" for dep, s in states.items() if s.is_open(now)}
    locks = [
        (s.open_until_ns, f"{circuit_open_code(dep)}: {s.reason}")
        for dep, s in states.items()
        if dep.startswith("broker_") and s.is_open(now)
    ]
    if limiter is not None:
        bucket = await limiter.state()
        if bucket.is_locked(limiter.now_ns()):
            locks.append((bucket.locked_until_ns, f"{BROKER_LOCKED}: {bucket.lock_reason}"))
    if not locks:
        return st.Health(breakers=open_)
    until, reason = max(locks)
    return st.Health(breakers=open_, locked_until_ns=until, lock_reason=reason)


def consumers(
    bus: Bus,
    processor: Processor,
    broker: AlpacaBroker,
    live: Live,
    breakers: Breakers,
    errors: ErrorHandler,
    *,
    fallback_allowed: bool = False,
    submit_wait_sec: float = 5.0,
    cancel_on_kill: bool = False,
    snapshot_every_bars: int = 0,
) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return execution's durable consumers; `live` holds the orders whose broker call is under way."""
    subjects = bus.subjects
    decisions = ConsumerSpec(
        durable="execution-decisions",
        family=sj.OMS,
        filter_subject=subjects.family_wildcard(sj.OMS),
        decode=lambda _s, data: _decision_decoder.decode(data),
        batch=64,
        # one order may wait for the broker's clock (10 s), a request token (5 s) and exit-leg
        # cancels (5 s) before its call: never redelivered while it is still being decided
        ack_wait_sec=60.0,
    )
    # the local exchange's FillsDone: the orders it changed are read back, then it goes on
    fills_done = ConsumerSpec(
        durable="execution-fills-done",
        family=sj.EXEC,
        filter_subject=subjects.fills_done("exchange"),
        decode=lambda _s, data: _fills_done_decoder.decode(data),
        batch=16,
    )
    control = ConsumerSpec(
        durable="execution-control",
        family=sj.CTL,
        filter_subject=f"{subjects.prefix}.{sj.CTL}.>",
        decode=decode_control,
        batch=16,
    )

    async def submit_one(inbound: Inbound, d: PretradeDecision) -> None:
        cid = d.client_order_id
        # held from before the hand-over, so the poller never takes a fresh order for one
        # interrupted by a crash; and a redelivery waiting here behind the first delivery of the
        # same decision sees that one's commit when it gets in (checked under the hold)
        async with live.calling(cid):
            if await processor.store.is_tracked(decisions.durable, inbound.stream_seq):
                return  # applied before (a crash or a held batch lost the ack)
            with tracing.span("execution submit", parent_headers=inbound.headers):
                await submit_or_refuse(inbound, d)
        await after_call(processor, live, cid)
        held = processor.state.orders.get(cid)
        if held is not None and held.broker_status == st.UNKNOWN:
            live.wake.set()  # look it up now, not after the poller's (slow, stream-healthy) sleep

    async def submit_or_refuse(inbound: Inbound, d: PretradeDecision) -> None:
        cid = d.client_order_id
        # an order handed over before a crash is resolved, never refused: the halt flag and the
        # other checks only stop orders that have not yet left for the broker
        fresh = not await processor.store.has_outbox_event(handlers.submitted_event_id(cid))
        if fresh and any([await processor.store.has_outbox_event(i) for i in handlers.refused_event_ids(cid)]):
            # skipped or failed already (its tracking row was lost with a failed batch): that is its outcome
            await processor.apply(decisions.durable, [inbound], lambda s, _e, _c: (s, []))
            return
        if fresh:
            try:
                refused = await checks(d)
            except Exception as e:  # handled: the order is not sent, and it still gets its one outcome
                if isinstance(e, DependencyFailed) and isinstance(e.cause, Throttled):
                    # keel's own limit held a check's request back: the order waits for nothing,
                    # it is skipped with the limit's reason (RATE_LIMITED, BROKER_LOCKED)
                    throttled = e.cause
                    await processor.apply(
                        decisions.durable,
                        [inbound],
                        lambda s, _e, c: handlers.skip(
                            s, d, throttled.reason, str(throttled), c, details={"wait_sec": f"{throttled.wait_sec:.3f}"}
                        ),
                    )
                    return
                # a check could not run (the bus, the broker's clock, a cancel), or a bug in one (which
                # halts trading): not sent, and said
                dependency = e.dependency if isinstance(e, DependencyFailed) else dependency_of(e, SUBMIT)
                info = await errors.handle(e, dependency=dependency, context=f"checks before sending {cid}",
                                           symbol=d.symbol, key=cid)  # fmt: skip
                await processor.apply(decisions.durable, [inbound], lambda s, _e, c: handlers.fail(s, d, info, c))
                return
            if refused is not None:
                # answered at once, so the watermark behind it is not held up
                reason, message, details = refused
                if processor.metrics:
                    processor.metrics.decision("submit_skipped", reason)
                await processor.apply(
                    decisions.durable,
                    [inbound],
                    lambda s, _e, c: handlers.skip(s, d, reason, message, c, details=details),
                )
                return
            ctx = processor.ctx()
            traceparent = tracing.inject({}).get(sj.H_TRACEPARENT, "")
            await processor.commit(lambda s: handlers.hand_over(s, d, broker.name, traceparent, ctx))
            crash_point("execution.handed_over")
        order = processor.state.orders.get(cid)
        outcome: handlers.Outcome | None = None
        if order is not None and fresh:
            outcome = await broker.submit(order, reserved=True)
        elif order is not None and order.broker_status in st.PRE_ACK:
            # handed over before a crash, answer unknown: look it up before sending again
            outcome = await broker.recover(order, resend=await resend_allowed(bus, breakers))
        # else: resolved (or finished) by a poll before this redelivery
        if outcome is not None:
            crash_point("execution.after_response")
        await count_submit(processor, breakers, errors, outcome)
        await halt_if_needed(bus, processor, cid, outcome)
        await processor.apply(
            decisions.durable,
            [inbound],
            lambda s, _e, c: handlers.on_outcome(s, cid, outcome, c) if outcome is not None else (s, []),
        )

    async def checks(d: PretradeDecision) -> tuple[str, str, dict[str, str]] | None:
        """Return why an approved order may not go now (reason code, message, details), or None.

        The halt flag, an open dependency breaker, an order of unknown status of the symbol, exit
        legs that filled while being canceled for it; a failing dependency raises DependencyFailed.
        """
        # the broker's market clock (GET /v2/clock): its own dependency and breaker
        if not await calling("calendar_market_clock", broker.wait_for_clock(d.bar_ts)):
            log.warning(
                "broker clock behind the decision bar; submitting anyway",
                extra={"client_order_id": d.client_order_id, "bar_ts": d.bar_ts},
            )
        refused = await gate(d)
        exits = [] if refused else handlers.exits_in_the_way(processor.state, d.symbol, d.side)
        if refused is None and not exits:
            refused = await budget(d)
        if exits:
            filled = await calling("broker_submit", free_shares(d, exits))
            # the cancels may have taken seconds: the halt flag and breakers are read again
            refused = await gate(d)
            if refused is None and filled:
                # an exit has filled: the position this order was sized on is not there any more
                why = (
                    f"exit {', '.join(filled)} has filled (part of) the position this order was sized on; decide again"
                )
                refused = handlers.EXIT_LEG_FILLED, why, {"exits": ",".join(filled)}
            if refused is None:
                refused = await budget(d)
        return refused

    async def budget(d: PretradeDecision) -> tuple[str, str, dict[str, str]] | None:
        """Take the order's request token now, so a throttled order is skipped before hand-over."""
        got = await calling("bus", broker.reserve(submit_wait_sec))
        if got is None or got.taken:
            return None
        details = {"wait_sec": f"{got.wait_sec:.3f}"}
        if got.reason == BROKER_LOCKED:
            details.update(locked_until_ns=str(got.locked_until_ns), lock_reason=got.lock_reason)
            message = f"the broker account is locked until {got.locked_until_ns} ({got.lock_reason}); not sent"
        else:
            message = f"no request token within {submit_wait_sec:g}s (the account's rate limit); not sent"
        return got.reason, message, details

    async def gate(d: PretradeDecision) -> tuple[str, str, dict[str, str]] | None:
        halt, block = await calling(
            "bus",
            asyncio.gather(bus.halt_state(), breakers.order_block(fallback_allowed=fallback_allowed)),
        )
        if halt is not None and halt.halted:
            return handlers.KILL_SWITCH_BLOCK, f"halted: {halt.reason}", {"halt_reason": halt.reason}
        if block is not None:
            dep, why = block
            message = f"{dep} breaker open after repeated failures ({why}); not sent"
            return circuit_open_code(dep), message, {"dependency": dep, "failure": why}
        unknown = handlers.unknown_order_block(processor.state, d)
        if unknown:
            return handlers.UNKNOWN_ORDER_BLOCK, unknown, {}
        return None

    async def free_shares(d: PretradeDecision, exits: list[st.ExecOrder]) -> list[str]:
        """Cancel the exit orders holding the shares an order needs; return those that have filled.

        An order on the side of the exits resting on a position (it reduces the position) would
        be refused, so the exits are canceled first (alert EXIT_LEGS_CANCELED) and the order waits,
        up to LEGS_CANCEL_WAIT_SEC, for the broker to confirm; the rest of the position is then
        unprotected until a new entry brings new legs.
        """
        refused = [await broker.cancel(o.broker_order_id) for o in exits]
        names = ", ".join(o.client_order_id for o in exits)
        ctx = processor.ctx()
        alert = handlers.alert(
            "EXIT_LEGS_CANCELED",
            "warning",
            f"{d.symbol}: exits {names} canceled for {d.side} order {d.client_order_id}, which needs their shares",
            f"exits-canceled:{d.client_order_id}",
            ctx,
            client_order_id=d.client_order_id,
            symbol=d.symbol,
            refused="; ".join(r for r in refused if r),
        )
        await processor.commit(lambda s: (s, [alert]))
        if processor.metrics:
            processor.metrics.decision("exit_legs_canceled", "EXIT_LEGS_CANCELED")
        deadline = asyncio.get_running_loop().time() + LEGS_CANCEL_WAIT_SEC
        filled = {o.client_order_id: o.cum_qty for o in exits}  # the most each is known to have filled
        pending = exits
        while pending and asyncio.get_running_loop().time() < deadline:
            for o in pending:
                bo = await broker.order(o.broker_order_id)
                if bo is not None:
                    filled[o.client_order_id] = max(filled[o.client_order_id], bo.filled_qty)
                await apply_polled(o.client_order_id, bo)
            pending = [o for o in exits if o.client_order_id in processor.state.orders]
            if pending:
                await asyncio.sleep(0.05)
        # an exit with any fill has moved the position, maybe after risk sized this order on it
        # (an exit's fills reach risk only through the OMS, which may not have reported them yet)
        return [cid for cid, qty in filled.items() if qty > 0]

    async def apply_polled(cid: str, bo: st.BrokerOrder | None) -> None:
        ctx = processor.ctx()
        await processor.commit(lambda s: handlers.on_broker_order(s, cid, bo, ctx))

    async def submit_all(approved: list[tuple[Inbound, PretradeDecision]]) -> None:
        # orders for different symbols go out concurrently (their HTTP round trips overlap);
        # orders for one symbol keep their stream order
        by_symbol: dict[str, list[tuple[Inbound, PretradeDecision]]] = defaultdict(list)
        for inbound, d in approved:
            by_symbol[d.symbol].append((inbound, d))

        async def in_order(items: list[tuple[Inbound, PretradeDecision]]) -> None:
            for inbound, d in items:
                await submit_one(inbound, d)

        # every symbol's task runs to its end before a failure of one is raised (and the batch
        # held for retry), so no task is still deciding an order when it is tried again
        done = await asyncio.gather(*(in_order(items) for items in by_symbol.values()), return_exceptions=True)
        failures = [r for r in done if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    async def on_decisions(batch: list[Inbound]) -> None:
        # approved decisions are submitted; a watermark waits for every submit before it (so the
        # feed's lockstep knows the orders of its bar are at the broker); the rest (position
        # reports, denials) only need their tracking rows
        approved: list[tuple[Inbound, PretradeDecision]] = []
        passive: list[Inbound] = []
        for inbound in batch:
            ev = inbound.payload
            if isinstance(ev, PretradeDecision) and ev.approved:
                approved.append((inbound, ev))
            elif isinstance(ev, Watermark):
                await submit_all(approved)
                approved = []
                now = await health(breakers, broker.limiter)
                due = (
                    snapshot_every_bars
                    and ev.source == handlers.UPSTREAM
                    and ev.bar_ts > processor.state.last_watermark
                )
                held = (
                    await read_holdings(broker, errors, f"bar {ev.bar_ts}")
                    if due and ev.bar_ts // MINUTE_NS % snapshot_every_bars == 0
                    else None
                )
                await processor.apply(
                    decisions.durable,
                    [*passive, inbound],
                    lambda s, e, c, now=now, held=held: (
                        watermark_step(s, e, now, held, c) if isinstance(e, Watermark) else handlers.step(s, e, c)
                    ),
                )
                passive = []
            elif isinstance(ev, CancelRequested):
                await submit_all(approved)
                approved = []
                if passive:
                    await processor.apply(decisions.durable, passive, handlers.step)
                    passive = []
                await cancel_requested(inbound, ev)
            else:
                passive.append(inbound)
        await submit_all(approved)
        if passive:
            await processor.apply(decisions.durable, passive, handlers.step)
        if any(isinstance(i.payload, OrderLookupRequested) for i in batch):
            live.wake.set()  # an order followed again (handlers.follow_again): look it up now

    async def cancel_requested(inbound: Inbound, ev: CancelRequested) -> None:
        """Cancel the order the OMS asked for (cleanup at start or at the session's close)."""
        if await processor.store.is_tracked(decisions.durable, inbound.stream_seq):
            return  # canceled before a crash lost the ack
        try:
            refused = await calling("broker_submit", broker.cancel(ev.broker_order_id))
        except Exception as e:  # handled: said, and not asked again (the next cleanup finds it again)
            dependency = e.dependency if isinstance(e, DependencyFailed) else dependency_of(e, SUBMIT)
            await errors.handle(e, dependency=dependency, context=f"{ev.reason} cancel of {ev.client_order_id}",
                                symbol=ev.symbol, key=ev.event_id)  # fmt: skip
            refused = "not sent"
        log.warning(
            "%s: cancel %s (%s) %s",
            ev.reason, ev.client_order_id, ev.broker_order_id, f"refused: {refused}" if refused else "sent",
            extra={"reason": ev.reason, "client_order_id": ev.client_order_id, "refused": refused},
        )  # fmt: skip
        if processor.metrics:
            processor.metrics.decision("cleanup_cancel", ev.reason)
        await processor.apply(decisions.durable, [inbound], lambda s, _e, _c: (s, []))

    async def read_back(broker_cid: str) -> None:
        """Read one order the exchange changed and report what changed (raise: retried)."""
        cid = processor.state.aliases.get(broker_cid, broker_cid)  # an exit leg: keel's id
        if cid not in processor.state.orders:
            return  # not ours, or finished
        async with live.calling(cid):
            order = processor.state.orders.get(cid)
            if order is not None and order.broker_status in st.PRE_ACK:
                order = await adopt_named(cid, order)
            if order is not None and order.broker_order_id:
                bo = await broker.order(order.broker_order_id)
                if bo is None:
                    # the lockstep must not go on without it: the batch is held and read again (and
                    # counted against the read's breaker, whose CIRCUIT_OPEN alert says it is stuck)
                    raise DependencyFailed(READ_BACK, ConnectionError(f"order {cid} could not be read back"))
                # its reports continue the order's trace, as a trade_updates frame's do
                with tracing.span("execution read back", parent_headers={sj.H_TRACEPARENT: order.traceparent}):
                    await apply_polled(cid, bo)
        await after_call(processor, live, cid)

    async def adopt_named(cid: str, order: st.ExecOrder) -> st.ExecOrder | None:
        """Adopt an order of unknown status (its submit got no answer) that the exchange names as
        changed: it holds it, so it is looked up by client_order_id here, in the lane's order,
        not whenever the poller would get to it (a replay would then differ with timing).
        Return the order as adopted; None when it finished or the broker says it is absent (the
        poller's recovery then decides whether it is sent again)."""
        found = await broker.lookup(order.client_order_id)
        if found is None:
            # no answer: the batch is held and read again, as for any failed read
            raise DependencyFailed(READ_BACK, ConnectionError(f"order {cid} of unknown status could not be looked up"))
        if not isinstance(found, st.BrokerOrder):
            log.warning("an order named by the exchange is absent there", extra={"client_order_id": cid})
            return None
        outcome = handlers.Accepted(order=found)
        ctx = processor.ctx()
        await processor.commit(lambda s: handlers.on_outcome(s, cid, outcome, ctx))
        return processor.state.orders.get(cid)

    async def on_fills_done(batch: list[Inbound]) -> None:
        # each announcement's orders, then the forward; a redelivered one that was done only
        # acks. A leg listed before its entry is not adopted yet and skipped: the entry's read
        # (nested) adopts and reports it
        for inbound in batch:
            if not await processor.store.is_tracked(fills_done.durable, inbound.stream_seq):
                for broker_cid in inbound.payload.orders:
                    await read_back(broker_cid)
            await processor.apply(fills_done.durable, [inbound], handlers.step)

    def watermark_step(
        s: st.ExecState, wm: Watermark, now: st.Health, held: st.Holdings | None, c: Ctx
    ) -> tuple[st.ExecState, list]:  # type: ignore[type-arg]
        s, events = handlers.on_watermark(s, wm, now, c)
        if held is None:
            return s, events
        s, snap = handlers.broker_snapshot(s, "periodic", held, wm.bar_ts, c)
        return s, [*snap, *events]  # the snapshot first: the OMS reconciles before the bar ends

    async def on_control(batch: list[Inbound]) -> None:
        for inbound in batch:
            if await processor.store.is_tracked(control.durable, inbound.stream_seq):
                continue  # done before a crash: cancelling again would hit orders placed since
            cmd = inbound.payload
            if isinstance(cmd, CancelAllOrders) or (
                isinstance(cmd, HaltTrading) and (cmd.cancel_all or cancel_on_kill)
            ):
                n = await broker.cancel_all()
                log.warning("CANCEL_ALL_TRIGGERED", extra={"canceled": n, "subject": inbound.subject})
                if processor.metrics:
                    processor.metrics.decision("cancel_all", "CANCEL_ALL_TRIGGERED")
            await processor.apply(control.durable, [inbound], lambda s, _e, _c: (s, []))

    return [(decisions, on_decisions), (fills_done, on_fills_done), (control, on_control)]
