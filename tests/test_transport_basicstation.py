"""LoRa Basics Station LNS transport (issue 15, item 2): a real aiohttp WebSocket client acts as the station.

Over TLS on 127.0.0.1 with a self-signed certificate made here: discovery, the
muxs handshake (version -> router_config), a propdf carrying a real sealed
Lumeau frame stored as a record, a command queued through the API going out as
dnmsg in RX1 and marked sent by dntxed, refused tokens and EUIs, foreign LoRaWAN
frames counted and ignored, and hostile messages fuzzed with hypothesis.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_helpers import node_keys, registry, seal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_helpers import Gateway as Pipe
from transport_helpers import light_frame
from waiting import wait_for

from gateway.config import ConfigError, load_config
from gateway.service import Gateway
from gateway.transports import basicstation
from gateway.transports.basicstation import BasicStationServer, parse_router, parse_tokens
from protocol import frame, proprietary
from protocol import messages as m

API_TOKEN = "station-test-api-token-0123456789"
EUI = "0102030405060708"
STATION_TOKEN = "station-token-abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {STATION_TOKEN}"}
XTIME = 0x1C00_0000_1234_5678  # a session id in the top bits, as stations send
RCTX = 3


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost; the key file 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lumeau-lns-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "lns.pem", tmp / "lns.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def write_tokens(tmp: Path) -> Path:
    p = tmp / "station.tokens"
    p.write_text(
        f"# gateway EUI, its token\n{EUI} {STATION_TOKEN}\naa-55-5a-00-00-00-01-01 other-station-token-0123456789\n"
    )
    p.chmod(0o600)
    return p


def write_config(tmp: Path, extra: str = "") -> Path:
    make_cert(tmp)
    write_tokens(tmp)
    p = tmp / "gateway.toml"
    p.write_text(f"""
[gateway]
id = "station-test"
[api]
port = 0
token = "{API_TOKEN}"
[upstream]
enabled = false
[downlinks]
collect_s = 0.0
auto_time = false
[basicstation]
enabled = true
host = "127.0.0.1"
port = 0
tokens_file = "station.tokens"
cert_file = "lns.pem"
key_file = "lns.key"
{extra}
""")
    return p


def client_tls(tmp: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp / "lns.pem"))  # the station's tc.trust


def propdf(raw: bytes, xtime: int = XTIME, dr: int = 5, freq: int = 868_300_000, **upinfo: object) -> dict:
    return {
        "msgtype": "propdf",
        "FRMPayload": proprietary.wrap(raw).hex().upper(),  # the whole PHYPayload, as the station reports it
        "DR": dr,
        "Freq": freq,
        "upinfo": {
            "rctx": RCTX,
            "xtime": xtime,
            "gpstime": 0,
            "fts": -1,
            "rssi": -97,
            "snr": 8.25,
            "rxtime": time.time(),
            **upinfo,
        },
        "RefTime": 0.0,
    }


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def started(tmp: Path, extra: str = "") -> tuple[Gateway, BasicStationServer]:
    registry(tmp / "nodes.toml", [7]).save()
    gw = Gateway(load_config(write_config(tmp, extra)))
    await gw.start()
    return gw, next(t for t in gw.transports if isinstance(t, BasicStationServer))


async def test_a_station_over_tls_discovers_connects_and_its_frames_and_commands_flow(tmp_path):
    gw, srv = await started(tmp_path)
    tls = client_tls(tmp_path)
    api = f"http://127.0.0.1:{gw.api.port}"
    api_auth = {"Authorization": f"Bearer {API_TOKEN}"}
    try:
        async with aiohttp.ClientSession() as http:
            # discovery: the router EUI in the station's own dashed form -> the muxs URI
            async with http.ws_connect(f"wss://127.0.0.1:{srv.port}/router-info", ssl=tls, headers=AUTH) as ws:
                await ws.send_json({"router": "01-02-03-04-05-06-07-08"})
                info = await receive_json(ws)
            assert info["uri"] == f"wss://127.0.0.1:{srv.port}/router-{EUI}"
            assert info["router"] == "102:304:506:708" and "error" not in info

            async with http.ws_connect(info["uri"], ssl=tls, headers=AUTH) as ws:
                await ws.send_json({"msgtype": "version", "station": "2.0.6", "model": "test", "protocol": 2})
                conf = await receive_json(ws)
                assert conf["msgtype"] == "router_config" and conf["region"] == "EU863"
                assert conf["DRs"][5] == [7, 125, 0] and conf["DRs"][0] == [12, 125, 0]
                sx = conf["sx1301_conf"][0]
                centre = sx["radio_0"]["freq"]
                heard = sorted(
                    centre + sx[f"chan_multiSF_{i}"]["if"] for i in range(8) if sx[f"chan_multiSF_{i}"]["enable"]
                )
                assert tuple(heard) == basicstation.lora.DEFAULT_CHANNELS_HZ
                assert conf["nodc"] is False  # the station keeps the duty cycle

                # a command waits for the node's next uplink (class A)
                async with http.post(
                    f"{api}/nodes/00000007/commands", json={"op": "set_level", "args": [100, 600]}, headers=api_auth
                ) as r:
                    assert r.status == 201, await r.text()
                    cmd = await r.json()

                await ws.send_json(propdf(seal(7, 1)))
                await wait_for(lambda: gw.store.count() == 1, 10, "the propdf stored as a record")
                dn = await receive_json(ws)
                assert dn["msgtype"] == "dnmsg"
                assert (dn["dC"], dn["RxDelay"], dn["RX1DR"], dn["RX1Freq"]) == (0, 1, 5, 868_300_000)
                assert (dn["xtime"], dn["rctx"]) == (XTIME, RCTX)
                pdu = bytes.fromhex(dn["pdu"])
                inner = proprietary.unwrap(pdu)
                assert pdu[0] == 0xE0 and inner is not None
                f = frame.parse(inner)
                assert f.node_id == 7 and f.mtype == m.COMMAND
                frame.verify(node_keys(7), f)  # sealed with node 7's downlink key

                async def state() -> str:
                    async with http.get(f"{api}/commands/{cmd['id']}", headers=api_auth) as r:
                        return (await r.json())["state"]

                assert await state() == "queued"  # not sent before the station says so
                await ws.send_json({"msgtype": "dntxed", "diid": dn["diid"], "DevEui": dn["DevEui"], "rctx": RCTX})
                deadline = time.monotonic() + 5
                while await state() != "sent":
                    assert time.monotonic() < deadline, "dntxed did not mark the command sent"
                    await asyncio.sleep(0.02)
                assert srv.counts["downlinks_sent"] == 1

                # a LoRaWAN device's uplink and join: counted, ignored, the connection lives on
                await ws.send_json({"msgtype": "updf", "MHdr": 64, "DevAddr": 1, "FRMPayload": "00", "upinfo": {}})
                await ws.send_json({"msgtype": "jreq", "MHdr": 0, "JoinEui": "00-00-00-00-00-00-00-01"})
                await ws.send_json(dict(propdf(b""), FRMPayload="40010203040000010001"))  # LoRaWAN data: not ours
                await ws.send_json(propdf(seal(7, 2), xtime=XTIME + 5_000_000))
                await wait_for(lambda: gw.store.count() == 2, 10, "a valid frame after the foreign ones")
                assert (srv.counts["foreign_updf"], srv.counts["foreign_jreq"], srv.counts["foreign_propdf"]) == (
                    1,
                    1,
                    1,
                )
                assert srv.counts["internal_error"] == 0
                stats = srv.stats()
                assert stats["stations_connected"] == 1 and stats["propdf_forwarded"] == 2
                rec = gw.store.next_batch(10)[0][1]
                async with http.get(f"{api}/metrics", headers=api_auth) as r:
                    metrics = await r.text()
                assert 'transport="basic_station"' in metrics and 'counter="foreign_updf"} 1' in metrics
                assert rec.gateway_id == f"basicstation:{EUI}" and rec.best_rssi == -97.0 and rec.best_snr == 8.25
    finally:
        await gw.stop()


async def test_wrong_tokens_and_unknown_gateways_are_refused_and_counted(tmp_path, caplog):
    gw, srv = await started(tmp_path)
    tls = client_tls(tmp_path)
    url = f"wss://127.0.0.1:{srv.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token-0123456789abc"},
                {"Authorization": f"Bearer  {STATION_TOKEN}"},  # the exact form only
                {"Authorization": f"Bearer {STATION_TOKEN}x"},
                {"Authorization": f"bearer {STATION_TOKEN}"},
                {"Authorization": "Bearer other-station-token-0123456789"},  # another gateway's token
            ):
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await http.ws_connect(f"{url}/router-{EUI}", ssl=tls, headers=headers)
                assert e.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(f"{url}/router-00000000000000ff", ssl=tls, headers=AUTH)
            assert e.value.status == 403
            # discovery: a stranger gets no WebSocket; a known token naming another gateway gets an error
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(f"{url}/router-info", ssl=tls, headers={"Authorization": "Bearer nope"})
            assert e.value.status == 403
            other = {"Authorization": "Bearer other-station-token-0123456789"}
            async with http.ws_connect(f"{url}/router-info", ssl=tls, headers=other) as ws:
                await ws.send_json({"router": int(EUI, 16)})
                info = await receive_json(ws)
            assert "error" in info and "uri" not in info
            # plain HTTP to the TLS port gets nowhere
            with pytest.raises(aiohttp.ClientError):
                await http.ws_connect(f"ws://127.0.0.1:{srv.port}/router-{EUI}", headers=AUTH)
        assert srv.counts["auth_refused"] == 8 and srv.counts["unknown_router"] == 1
        assert srv.counts["connections"] == 0
        assert STATION_TOKEN not in caplog.text and "wrong-token" not in caplog.text
    finally:
        await gw.stop()


async def test_a_second_connection_replaces_the_first(tmp_path):
    gw, srv = await started(tmp_path)
    tls = client_tls(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            first = await http.ws_connect(f"wss://127.0.0.1:{srv.port}/router-{EUI}", ssl=tls, headers=AUTH)
            second = await http.ws_connect(f"wss://127.0.0.1:{srv.port}/router-{EUI}", ssl=tls, headers=AUTH)
            msg = await asyncio.wait_for(first.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await second.send_json(propdf(seal(7, 1)))
            await wait_for(lambda: gw.store.count() == 1, 10)
            assert srv.counts["replaced"] == 1 and srv.stats()["stations_connected"] == 1
            await second.close()
    finally:
        await gw.stop()


async def test_reloaded_tokens_disconnect_a_revoked_station_and_a_bad_file_keeps_the_old_ones(tmp_path, caplog):
    gw, srv = await started(tmp_path)
    tls = client_tls(tmp_path)
    url = f"wss://127.0.0.1:{srv.port}/router-{EUI}"
    new = "station-token-rotated-0123456789"
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url, ssl=tls, headers=AUTH)
            tokens = tmp_path / "station.tokens"
            tokens.write_text(f"{EUI} short\n")  # does not load: the running tokens stay
            await gw.reload_station_tokens()
            assert "station tokens not reloaded" in caplog.text and not ws.closed
            tokens.write_text(f"{EUI} {new}\n")
            await gw.reload_station_tokens()
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert srv.counts["revoked"] == 1
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(url, ssl=tls, headers=AUTH)
            async with http.ws_connect(url, ssl=tls, headers={"Authorization": f"Bearer {new}"}) as ws2:
                await ws2.send_json(propdf(seal(7, 1)))
                await wait_for(lambda: gw.store.count() == 1, 10)
            assert new not in caplog.text and STATION_TOKEN not in caplog.text
    finally:
        await gw.stop()


async def test_a_downlink_too_late_or_never_confirmed_stays_queued(tmp_path):
    pipe = await Pipe.open(tmp_path / "gw.db")
    clock = [100.0]
    srv = BasicStationServer(
        pipe.pipeline,
        "127.0.0.1",
        0,
        tokens={EUI: STATION_TOKEN},
        ssl_context=None,
        dntxed_timeout=0.05,
        monotonic=lambda: clock[0],
    )
    await srv.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{srv.port}/router-{EUI}", headers=AUTH) as ws:
                await ws.send_json(propdf(light_frame(counter=1)))
                await pipe.seen.wait(lambda: len(pipe.seen.uplinks) == 1)
                up = pipe.seen.uplinks[0][1].path
                clock[0] += 0.95  # 50 ms before RX1: less than the send margin
                with pytest.raises(basicstation.DownlinkError) as e:
                    await up.send_downlink(b"x" * 12, pipe.seen.uplinks[0][1])
                assert e.value.reason == "too_late"
                clock[0] -= 0.95
                with pytest.raises(basicstation.DownlinkError) as e:  # the station never says dntxed
                    await up.send_downlink(b"x" * 12, pipe.seen.uplinks[0][1])
                assert e.value.reason == "timeout" and srv.counts["dntxed_missing"] == 1
                assert (await receive_json(ws))["msgtype"] == "dnmsg"
    finally:
        await srv.stop()
        await pipe.close()


async def test_a_huge_number_drops_the_field_not_the_frame_and_an_oversized_message_only_its_link(tmp_path):
    pipe = await Pipe.open(tmp_path / "gw.db")
    srv = BasicStationServer(
        pipe.pipeline, "127.0.0.1", 0, tokens={EUI: STATION_TOKEN}, ssl_context=None, max_message_bytes=4096
    )
    await srv.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{srv.port}/router-{EUI}", headers=AUTH) as ws:
                text = json.dumps(propdf(light_frame(counter=1), rssi="@R", rxtime="@T"))
                await ws.send_str(text.replace('"@R"', "9" * 400).replace('"@T"', "1" + "0" * 3000))
                await pipe.seen.wait(lambda: len(pipe.seen.uplinks) == 1)
                rx = pipe.seen.uplinks[0][1]
                assert rx.rssi is None and rx.snr == 8.25 and abs(rx.rx_time - time.time()) < 60
                assert srv.counts["bad_field"] == 2 and srv.counts["internal_error"] == 0
                await ws.send_str(json.dumps({"msgtype": "propdf", "FRMPayload": "E0" * 5000}))
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert srv.counts["malformed"] == 1
            async with http.ws_connect(f"ws://127.0.0.1:{srv.port}/router-{EUI}", headers=AUTH) as ws:
                await ws.send_json(propdf(light_frame(counter=2)))
                await pipe.seen.wait(lambda: len(pipe.seen.uplinks) == 2)
    finally:
        await srv.stop()
        await pipe.close()


async def test_a_flood_of_bad_messages_and_refusals_logs_a_bounded_number_of_lines(tmp_path, caplog):
    from gateway import logs

    pipe = await Pipe.open(tmp_path / "gw.db")
    # a frozen monotonic clock: the limiter never refills, so the burst is all that may pass
    srv = BasicStationServer(
        pipe.pipeline, "127.0.0.1", 0, tokens={EUI: STATION_TOKEN}, ssl_context=None, monotonic=lambda: 1000.0
    )
    await srv.start()
    caplog.set_level(logging.DEBUG, logger="lumeau.gateway.transports.basicstation")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{srv.port}/router-{EUI}", headers=AUTH) as ws:
                for i in range(300):
                    await ws.send_str(["{", "[1]", '{"msgtype": 5}', '"x"'][i % 4])
                await ws.send_json(propdf(light_frame(counter=1)))
                await pipe.seen.wait(lambda: len(pipe.seen.uplinks) == 1)
            for _ in range(50):
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await http.ws_connect(f"ws://127.0.0.1:{srv.port}/router-{EUI}", headers={"Authorization": "x"})
    finally:
        await srv.stop()
        await pipe.close()
    assert srv.counts["malformed"] == 225 and srv.counts["unknown_msgtype"] == 75
    assert srv.counts["auth_refused"] == 50
    for what in ("malformed message", "connection refused", "unknown msgtype"):
        lines = [r for r in caplog.records if what in r.getMessage()]
        assert 1 <= len(lines) <= logs.LOG_BURST, (what, len(lines))


def test_router_ids_and_tokens_files_parse_or_say_why():
    for form in ("0102030405060708", "01-02-03-04-05-06-07-08", "01:02:03:04:05:06:07:08", "102:304:506:708"):
        assert parse_router(form) == EUI, form
    assert parse_router(0x0102030405060708) == EUI
    assert parse_router("::1") == "0000000000000001"
    for bad in (True, -1, 1 << 64, "xyz", "1::2::3", "0102", 1.5, None, [1], "1:2:3:4:5"):
        assert parse_router(bad) is None, bad
    assert parse_tokens(f"# c\n{EUI} {STATION_TOKEN}\n\n") == {EUI: STATION_TOKEN}
    for text, why in (
        (f"{EUI}\n", "line 1: expected"),
        (f"zz {STATION_TOKEN}\n", "not a gateway EUI"),
        (f"{EUI} short\n", "shorter than 16"),
        (f"{EUI} {STATION_TOKEN}\n{EUI} {STATION_TOKEN}x\n", "line 2: gateway EUI 0102030405060708 is listed twice"),
    ):
        with pytest.raises(ValueError, match=why) as e:
            parse_tokens(text)
        assert STATION_TOKEN not in str(e.value)


def test_config_errors_name_the_file_key_and_why(tmp_path):
    cfg = load_config(write_config(tmp_path))
    assert cfg.basicstation.enabled and cfg.basicstation.tokens_file == tmp_path / "station.tokens"
    (tmp_path / "station.tokens").chmod(0o644)
    with pytest.raises(ConfigError, match=r"gateway.toml: basicstation.tokens_file: .* chmod 600"):
        load_config(tmp_path / "gateway.toml")
    (tmp_path / "station.tokens").chmod(0o600)
    (tmp_path / "lns.key").chmod(0o640)
    with pytest.raises(ConfigError, match=r"basicstation.key_file: .* chmod 600"):
        load_config(tmp_path / "gateway.toml")
    (tmp_path / "lns.key").chmod(0o600)
    (tmp_path / "lns.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"basicstation.cert_file: the certificate and key_file do not load"):
        load_config(tmp_path / "gateway.toml")
    p = tmp_path / "other.toml"
    p.write_text('[api]\ntoken = "' + API_TOKEN + '"\n[basicstation]\nenabled = true\n')
    with pytest.raises(ConfigError, match=r"other.toml: basicstation.tokens_file: required"):
        load_config(p)
    p.write_text('[api]\ntoken = "' + API_TOKEN + '"\n[basicstation]\nenabled = true\ntokens_file = "station.tokens"\n')
    with pytest.raises(ConfigError, match=r"basicstation.cert_file: required with tls = true"):
        load_config(p)


# ---------------------------------------------------------------- hostile input, fuzzed


class Escaped(logging.Handler):
    """ERROR lines aiohttp writes when an exception escapes a request handler."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


ESCAPED = Escaped()


@pytest.fixture(scope="module")
def live_station(tmp_path_factory):
    """A server, a real pipeline and a connected station on their own loop, for sync hypothesis tests."""
    loop = asyncio.new_event_loop()

    async def make():
        pipe = await Pipe.open(tmp_path_factory.mktemp("bsfuzz") / "gw.db")
        srv = BasicStationServer(pipe.pipeline, "127.0.0.1", 0, tokens={EUI: STATION_TOKEN}, ssl_context=None)
        await srv.start()
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"ws://127.0.0.1:{srv.port}/router-{EUI}", headers=AUTH)
        return pipe, srv, http, ws

    pipe, srv, http, ws = loop.run_until_complete(make())
    aio = logging.getLogger("aiohttp")  # an exception escaping a handler is logged here by aiohttp
    aio.addHandler(ESCAPED)
    yield loop, pipe, srv, ws
    aio.removeHandler(ESCAPED)
    loop.run_until_complete(ws.close())
    loop.run_until_complete(http.close())
    loop.run_until_complete(srv.stop())
    loop.run_until_complete(pipe.close())
    loop.close()


HUGE = ["9" * 400, "-" + "9" * 5000, "1e999", "-1e999", "1" * 25]
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["@HUGE0", "@HUGE1", "@HUGE2", "@HUGE3", "@HUGE4"]),
)
value = st.recursive(scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3))
FIELDS = ["msgtype", "FRMPayload", "DR", "Freq", "upinfo", "diid", "station"]
MSGTYPES = st.sampled_from(["propdf", "updf", "jreq", "dntxed", "version", "timesync", "nope"])
hostile_doc = st.fixed_dictionaries(
    {"msgtype": MSGTYPES},
    optional={
        "FRMPayload": st.one_of(value, st.just("E0" + light_frame(counter=9).hex()), st.just("E0zz")),
        "DR": value,
        "Freq": value,
        "diid": value,
        "upinfo": st.one_of(value, st.dictionaries(st.sampled_from(["rssi", "snr", "xtime", "rctx", "rxtime"]), value)),
    },
)


def hostile_text(doc: dict, deep: int, duplicate: bool) -> str:
    text = json.dumps(doc)
    for i, h in enumerate(HUGE):
        text = text.replace(f'"@HUGE{i}"', h)
    if duplicate:
        text = text[:-1] + ', "msgtype": "propdf"}'
    if deep:
        text = "[" * deep + text + "]" * deep
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=hostile_doc, deep=st.sampled_from([0, 0, 0, 3, 10_000]), duplicate=st.booleans(), raw=st.booleans())
def test_fuzz_hostile_messages_never_cost_the_valid_frame(live_station, doc, deep, duplicate, raw):
    loop, pipe, srv, ws = live_station
    n = srv.counts["messages"]
    node = 0x500000 + n
    valid = light_frame(node_id=node, counter=1)
    texts = [hostile_text(doc, deep, duplicate) if not raw else json.dumps(doc)[: len(json.dumps(doc)) // 2]]
    texts.append(json.dumps(propdf(valid)))

    async def run() -> None:
        for t in texts:
            await ws.send_str(t)
        await wait_for(lambda: srv.counts["messages"] >= n + 2, 5, interval=0.001)
        await wait_for(lambda: any(r.node_id == node for r, _ in pipe.seen.uplinks), 5, interval=0.001)

    loop.run_until_complete(run())
    assert srv.counts["internal_error"] == 0 and not ESCAPED.lines
    assert not ws.closed


@settings(max_examples=300, deadline=None)
@given(v=st.one_of(value, st.text(alphabet="0123456789abcdefABCDEF:-", max_size=40)))
def test_fuzz_router_ids_parse_or_are_none(v):
    eui = parse_router(v)
    assert eui is None or (len(eui) == 16 and all(c in "0123456789abcdef" for c in eui))
    if eui is not None:  # every accepted form names the same EUI again in its canonical forms
        assert parse_router(eui) == eui and parse_router(basicstation.id6(eui)) == eui


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=value, deep=st.sampled_from([0, 3, 10_000]))
def test_fuzz_discovery_never_crashes(live_station, doc, deep):
    loop, pipe, srv, ws = live_station

    async def run() -> dict | None:
        async with aiohttp.ClientSession() as http:
            url = f"ws://127.0.0.1:{srv.port}/router-info"
            async with http.ws_connect(url, headers=AUTH) as d:
                text = hostile_text({"router": doc}, deep, False)
                await d.send_str(text)
                msg = await asyncio.wait_for(d.receive(), 5)
                if len(text) > 4096:  # over discovery's message limit: closed without an answer
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                    return None
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                return json.loads(msg.data)

    info = loop.run_until_complete(run())
    assert not ESCAPED.lines
    if info is None:
        return
    assert ("error" in info) != ("uri" in info)
    if "uri" in info:
        assert info["uri"].endswith(f"/router-{EUI}")
    assert srv.counts["internal_error"] == 0
