"""`lumeau gateway`: the service that wires transports, pipeline, store, downlinks, upstream and API.

(Over 600 lines: the one place that builds every part from the config and stops it in reverse.)

    lumeau gateway --config gateway.toml
    lumeau gateway --example-config > gateway.toml

(the command line: lumeau/commands/gateway.py; here `run(cfg)` and `Gateway`)

Start order (each step only once the previous one worked; a failure stops
what was started, in reverse): store, registry, downlinks, pipeline, API,
upstream, alarm notifications (`[notify]`, gateway/notify.py), then the
transports last, so nothing is heard before it can be stored. Once
everything listens, one log line "gateway started" gives the bound ports (port 0 in the config picks a free one).

The node registry file is watched (every REGISTRY_WATCH_S, its inode, size
and mtime): when it changes under the gateway -- `lumeau node provision
--registry FILE` run offline, an edit -- it is re-read at once, so a node
provisioned while the gateway runs is known without a signal. SIGHUP
re-reads it too. A file that does not load is refused with one error line
("registry not reloaded ...") and the running registry kept; it is tried
again at its next change.
SIGHUP also re-reads `[basicstation] tokens_file` (a station whose token
changed or was removed is disconnected; a file that does not load keeps the
running tokens, with one error line).

At info level the log says when a node is first heard since this start
("node heard", with its id, message kind and radio) and when an alarm is
raised or cleared ("alarm raised" / "alarm cleared", with the node, the
code's name and the zone), through a rate limiter (gateway/logs.py).

Shutdown on SIGTERM or SIGINT, in reverse: transports stop hearing; every
reception already handed over is committed (pipeline drain); downlinks and
the API stop; the upstream gets up to SHUTDOWN_UPSTREAM_S to finish the
batch in flight (anything not acknowledged stays queued for the next start);
the store commits, flushes node state and closes. A second signal, or
SHUTDOWN_TIMEOUT_S passing, cancels what is left -- still safe: what was
acknowledged is committed, the rest was never acknowledged.

Exit status: 0 after a clean shutdown, 2 for a configuration error (the
message names file, key and why), 1 when startup failed otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
from pathlib import Path
from typing import Any

from gateway import files, logs
from gateway.adr import ADR_KEYS, FALLBACK_UPLINKS, Adr, AdrObserver
from gateway.api import Api
from gateway.calendar_sync import CalendarSync
from gateway.calendars import load_dir as load_calendars
from gateway.campaigns import Campaigns, Delivery
from gateway.config import GatewayConfig
from gateway.downlinks import Downlinks
from gateway.fuota import FuotaSettings
from gateway.history import History
from gateway.model import Reception, Record
from gateway.notify import Notifier
from gateway.open311_feed import Place, RequestsFeed
from gateway.pipeline import Pipeline
from gateway.registry import Registry, RegistryError, file_stamp
from gateway.store import Store, StoreError
from gateway.timesync import TimeSync
from protocol import messages as m
from protocol.expand import ENUMS

log = logging.getLogger("lumeau.gateway.service")

SHUTDOWN_TIMEOUT_S = 15.0
SHUTDOWN_UPSTREAM_S = 5.0
REGISTRY_WATCH_S = 1.0  # how often the registry file's stamp is compared
# The hot path allocates many short-lived, acyclic objects (records, dicts of fields):
# collecting the youngest generation every 700 allocations (CPython's default) costs
# more than it finds. Measured with bench/gateway.py; memory stays bounded by the
# pipeline's and store's own limits, not by the collector.
GC_THRESHOLDS = (20_000, 20, 50)


class Gateway:
    """One running gateway. `await start()`, then `await stop()`; `run()` does both around signals."""

    def __init__(self, cfg: GatewayConfig, delivery: Delivery | None = None) -> None:
        self.cfg = cfg
        self.delivery = delivery  # moves release images for campaigns; None: _campaign_delivery() decides
        self.campaigns: Campaigns | None = None
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.downlinks: Downlinks | None = None
        self.pipeline: Pipeline | None = None
        self.adr: AdrObserver | None = None
        self.api: Api | None = None
        self.history: History | None = None
        self.upstream: Any = None
        self.transports: list[Any] = []
        self.timesync: TimeSync | None = None
        self.calendars: CalendarSync | None = None
        self.notifier: Notifier | None = None
        self.node_log = NodeLog()
        self._registry_stamp: tuple[int, int, int, int] | None = None
        self._watcher: asyncio.Task | None = None

    def _timesync_path(self) -> Path:
        db = self.cfg.gateway.database
        return db.with_name(db.name + ".time.json")

    def _load_timesync(self) -> TimeSync:
        """Automatic time (SPEC §4), with what it knew of the nodes' clocks at the last clean stop."""
        d = self.cfg.downlinks
        ts = TimeSync(
            threshold_s=d.time_resync_s, max_drift_ppm=d.time_max_drift_ppm, airtime_s_per_h=d.time_airtime_s_per_h
        )
        try:
            ts.load(self._timesync_path())
        except ValueError as e:  # a damaged file costs one re-sync per node, not the start
            log.warning("time-sync state not loaded: %s", e)
        return ts

    async def start(self) -> None:
        cfg = self.cfg
        files.set_group(cfg.gateway.file_group or None)  # before any file is created (issue 15)
        try:
            self.store = await Store.open(
                cfg.gateway.database,
                max_records=cfg.queue.max_records,
                group_max=cfg.queue.group_max,
                quarantine_max=cfg.queue.quarantine_max_records,
                alarm_journal=cfg.notify.enabled,  # alarm changes journalled with their records (notify.py)
                reserve_bytes=cfg.queue.reserve_bytes,
            )
            self._registry_stamp = file_stamp(cfg.gateway.registry)
            self.registry = Registry.load(cfg.gateway.registry)
            d = cfg.downlinks
            self.timesync = self._load_timesync() if d.auto_time else None
            self.downlinks = Downlinks(
                self.store,
                self.registry,
                default_ttl_s=d.default_ttl_s,
                max_attempts=d.max_attempts,
                max_queued_per_node=d.max_queued_per_node,
                collect_s=d.collect_s,
                ack_alarms=d.ack_alarms,
                timesync=self.timesync,
            )
            await self.downlinks.start()
            self.history = History() if cfg.api.enabled else None  # read only through the API
            first: Any = self.downlinks
            if cfg.adr.enabled:  # ADR queues its CONFIG before the downlinks answer the uplink (gateway/adr.py)
                a = cfg.adr
                self.adr = AdrObserver(
                    Adr(**{k: getattr(a, k) for k in ADR_KEYS}, fallback_uplinks=FALLBACK_UPLINKS), self.downlinks
                )
                first = self.adr
            if cfg.calendars.dir is not None:  # the calendar's fragment is queued before ADR's CONFIG
                self.calendars = CalendarSync(
                    load_calendars(cfg.calendars.dir),
                    self.registry,
                    first,
                    queue=self.downlinks,
                    clock=self.downlinks.clock,
                )
                first = self.calendars
            c = cfg.campaigns
            self.campaigns = Campaigns(
                self.store,
                self.registry,
                None,  # the delivery, once the transports exist (below)
                release_key=bytes.fromhex(c.release_key) if c.release_key else None,
                target=c.target,
                healthy_after_s=c.healthy_after_s,
                window_s=c.window_s,
            )
            await self.campaigns.load()  # before the pipeline: its HELLOs reach the campaigns
            watchers = (first, self.node_log, self.campaigns)
            observer = Observers(*watchers) if self.history is None else Observers(*watchers, self.history)
            self.pipeline = Pipeline(
                self.registry, self.store, downlinks=observer, max_inflight=cfg.pipeline.max_inflight
            )
            self.upstream = self._make_upstream()
            if cfg.notify.enabled:
                notifier = self.notifier = Notifier(cfg.notify, self.store, self.registry, cfg.gateway.id)
                self.pipeline.listeners.append(lambda _n: notifier.wake())
            self.transports = self._make_transports()
            if cfg.api.enabled:
                assert cfg.api.token is not None
                self.api = Api(
                    registry=self.registry,
                    store=self.store,
                    pipeline=self.pipeline,
                    downlinks=self.downlinks,
                    token=cfg.api.token.reveal(),
                    host=cfg.api.host,
                    port=cfg.api.port,
                    upstream=self.upstream,
                    transports=self.transports,
                    history=self.history,
                    ui=cfg.api.ui,
                    silent_after_s=cfg.api.silent_after_s,
                    notifier=self.notifier,
                    requests_feed=self._requests_feed(cfg),
                    multicast_repair_s=cfg.downlinks.multicast_repair_s,
                    calendars=self.calendars,
                    campaigns=self.campaigns,
                    fuota=FuotaSettings(**dataclasses.asdict(cfg.fuota)),
                )
                await self.api.start()
            self.campaigns.delivery = self._campaign_delivery()
            if self.upstream is not None:
                await self.upstream.start()
            if self.notifier is not None:
                await self.notifier.start()
            for t in self.transports:
                await t.start()
            self.campaigns.start()  # last: a resumed campaign's delivery needs the transports
            self._watcher = asyncio.create_task(self._watch_registry(), name="lumeau-registry-watch")
        except BaseException:
            await self.stop()
            raise
        # Everything loaded so far (registry, keys, config, modules) lives as long as the
        # process: move it out of the collector's way, and collect the young less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        log.info(
            "gateway started",
            extra={
                "gateway": cfg.gateway.id,
                "database": str(cfg.gateway.database),
                "nodes": len(self.registry),
                "queued": self.store.count(),
                "api_port": self.api.port if self.api else None,
                "semtech_port": next((t.port for t in self.transports if type(t).__name__ == "SemtechServer"), None),
                "serial_ports": [t.port for t in self.transports if type(t).__name__ == "SerialTransport"],
                "basicstation_port": next(
                    (t.port for t in self.transports if type(t).__name__ == "BasicStationServer"), None
                ),
                "upstream": getattr(self.upstream, "url", None),
            },
        )

    def _make_upstream(self) -> Any:
        if self.cfg.mqtt.enabled:
            return self._make_mqtt_upstream()
        u = self.cfg.upstream
        if not u.enabled:
            return None
        from gateway.upstream import Upstream

        assert self.store is not None and self.registry is not None and self.pipeline is not None
        up = Upstream(
            self.store,
            u.url,
            token=u.token.reveal() if u.token else None,
            fmt=u.format,
            native_version=u.native_version,
            batch_size=u.batch_max_records or None,
            max_age=u.batch_max_age_s,
            timeout=u.timeout_s,
            backoff_base=u.backoff_initial_s,
            backoff_max=u.backoff_max_s,
            max_retry_after=u.max_retry_after_s,
            gzip_level=u.gzip_level,
            gzip=None if u.gzip == "auto" else u.gzip == "on",
            gateway_id=self.cfg.gateway.id,
            node_info=self.registry.get,
            ngsi_tenant=u.tenant or None,
        )
        self.pipeline.listeners.append(lambda _n: up.notify())  # look at once, not at the next poll
        return up

    def _make_mqtt_upstream(self) -> Any:
        """[mqtt]: the store's upstream is an MQTT broker (gateway/upstream_mqtt.py); commands come
        back through the same downlink queue as the local API's."""
        from gateway.upstream_mqtt import MqttUpstream, tls_context

        q = self.cfg.mqtt
        assert self.store is not None and self.registry is not None and self.pipeline is not None
        up = MqttUpstream(
            self.store,
            q.host,
            q.port,
            shape=q.shape,
            site=q.site,
            client_id=q.client_id,
            username=q.username.reveal() if q.username else None,
            password=q.password.reveal() if q.password else None,
            tls=tls_context(q.ca_file, q.cert_file, q.key_file) if q.tls else None,
            keepalive=q.keepalive_s,
            batch_size=q.batch_max_records,
            max_age=q.batch_max_age_s,
            timeout=q.timeout_s,
            backoff_base=q.backoff_initial_s,
            backoff_max=q.backoff_max_s,
            max_payload=q.max_payload_bytes,
            registry=self.registry,
            downlinks=self.downlinks if q.commands else None,
        )
        self.pipeline.listeners.append(lambda _n: up.notify())
        return up

    def _make_transports(self) -> list[Any]:
        cfg, p = self.cfg, self.pipeline
        assert p is not None  # start() made it first
        out: list[Any] = []
        if cfg.semtech.enabled:
            from gateway.transports.semtech import SemtechServer, parse_sources

            s = cfg.semtech
            out.append(
                SemtechServer(
                    p,
                    s.host,
                    s.port,
                    rx_delay=s.rx_delay_s,
                    tx_power=s.tx_power_dbm,
                    invert_iq=s.invert_iq,
                    accept_no_crc=s.accept_no_crc,
                    trust_time=cfg.gateway.trust_radio_time,
                    rcvbuf=s.rcvbuf_bytes,
                    source_binding=s.source_binding,
                    sources=parse_sources(s.sources),
                )
            )
        for sp in cfg.serial:
            from gateway.transports.serial import SerialTransport

            out.append(
                SerialTransport(
                    p,
                    sp.port,
                    baudrate=sp.baudrate,
                    mode=sp.mode,
                    reconnect_min=sp.reconnect_min_s,
                    reconnect_max=sp.reconnect_max_s,
                    trust_time=cfg.gateway.trust_radio_time,
                )
            )
        if cfg.chirpstack.enabled:
            out.append(self._make_chirpstack())
        if cfg.basicstation.enabled:
            out.append(self._make_basicstation())
        if cfg.ble.enabled:
            from gateway.transports.ble import BleTransport

            b = cfg.ble
            out.append(
                BleTransport(
                    p,
                    adapter=b.adapter or None,
                    max_connections=b.max_connections,
                    scan_interval=b.scan_interval_s or None,
                    scan_window=b.scan_window_s,
                )
            )
        return out

    def _make_basicstation(self) -> Any:
        """[basicstation]: LoRa Basics Stations over WebSocket (TLS, a token per gateway EUI)."""
        from gateway.config import load_station_tokens, station_tls_context
        from gateway.transports.basicstation import BasicStationServer

        b = self.cfg.basicstation
        assert self.pipeline is not None and b.tokens_file is not None  # checked by the config
        return BasicStationServer(
            self.pipeline,
            b.host,
            b.port,
            tokens=load_station_tokens(b.tokens_file),
            ssl_context=station_tls_context(b.cert_file, b.key_file) if b.tls else None,
            rx_delay=b.rx_delay_s,
            dntxed_timeout=b.dntxed_timeout_s,
            max_message_bytes=b.max_message_bytes,
            trust_time=self.cfg.gateway.trust_radio_time,
        )

    def _make_chirpstack(self) -> Any:
        """[chirpstack]: uplinks from a ChirpStack application's MQTT integration, DevEUIs from the registry."""
        from gateway.transports.chirpstack import ChirpstackTransport, RegistryDevices
        from gateway.upstream_mqtt import tls_context

        c = self.cfg.chirpstack
        assert self.pipeline is not None
        return ChirpstackTransport(
            self.pipeline,
            c.host,
            c.port,
            application_id=c.application_id,
            devices=RegistryDevices(lambda: self.registry),
            username=c.username.reveal() if c.username else None,
            password=c.password.reveal() if c.password else None,
            tls=tls_context(c.ca_file, c.cert_file, c.key_file) if c.tls else None,
            client_id=c.client_id,
            keepalive=c.keepalive_s,
            confirmed=c.confirmed,
            backoff_base=c.backoff_initial_s,
            backoff_max=c.backoff_max_s,
            max_event_bytes=c.max_event_bytes,
        )

    async def stop(self) -> None:
        """Graceful, in reverse order; safe to call on a half-started gateway."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self.campaigns is not None:
            await _quietly(self.campaigns.close(), "campaigns")  # stays running on disk: resumed at start
            self.campaigns = None
        for t in reversed(self.transports):
            await _quietly(t.stop(), "transport")
        if self.pipeline is not None:
            await _quietly(self.pipeline.close(), "pipeline")
        if self.downlinks is not None:
            await _quietly(self.downlinks.close(), "downlinks")
        if self.timesync is not None:
            try:
                self.timesync.save(self._timesync_path())
            except OSError as e:
                log.warning("time-sync state not saved: %s", e)
            self.timesync = None
        if self.api is not None:
            await _quietly(self.api.stop(), "api")
        if self.upstream is not None:
            await _quietly(asyncio.wait_for(self.upstream.stop(), SHUTDOWN_UPSTREAM_S), "upstream")
        if self.notifier is not None:
            await _quietly(self.notifier.stop(), "notifier")  # what is not sent stays in the outbox
            self.notifier = None
        if self.store is not None:
            await _quietly(self.store.close(), "store")
        self.transports = []
        self.pipeline = self.downlinks = self.api = self.upstream = self.store = None

    def _campaign_delivery(self) -> Delivery | None:
        """What moves release images to nodes for campaigns (gateway/campaigns.py).

        A delivery given to Gateway(cfg, delivery=...) (tests) wins; else the API's LoRa
        delivery (gateway/fuota.py FuotaDelivery: multicast to a group's member lamps, unicast
        fragments to the others), which needs the API's multicast sender. With the API off
        there is none: POST /campaigns cannot happen, and a campaign found running at start
        waits, tracked but not sent.
        """
        if self.delivery is not None:
            return self.delivery
        return self.api.fuota if self.api is not None else None

    def _requests_feed(self, cfg: GatewayConfig) -> RequestsFeed | None:
        """The city's Open311 requests for the technician page ([open311] url), placed by the registry."""
        o = cfg.open311
        if not o.url:
            return None

        def places() -> list[Place]:
            reg = self.registry
            return [] if reg is None else [Place(f"{n.node_id:08x}", n.lat, n.lon) for n in reg]

        return RequestsFeed(
            o.url,
            jurisdiction_id=o.jurisdiction_id,
            refresh_s=o.refresh_s,
            timeout_s=o.timeout_s,
            radius_m=o.radius_m,
            places=places,
        )

    async def _watch_registry(self) -> None:
        """Reload the registry whenever its file changes under the gateway (see the module doc)."""
        while True:
            await asyncio.sleep(REGISTRY_WATCH_S)
            try:
                await self.reload_if_changed()
            except Exception:  # the watch must outlive any one bad turn
                log.exception("registry watch failed")

    async def reload_if_changed(self) -> bool:
        """Reload the registry if its file's stamp changed since the last load; True if it did."""
        stamp = file_stamp(self.cfg.gateway.registry)
        if stamp == self._registry_stamp or stamp is None:  # unchanged, or gone (a save in progress)
            return False
        await self.reload_registry()
        return True

    async def reload_registry(self) -> None:
        """Re-read the registry file (SIGHUP, or its file changed): provisioning wrote nodes or keys.

        A file that does not load leaves the running registry as it was.
        Nodes whose root key changed start their counters again (SPEC §2).
        """
        assert self.registry is not None and self.pipeline is not None
        self._registry_stamp = file_stamp(self.cfg.gateway.registry)  # before reading: a later change is seen
        try:
            fresh = Registry.load(self.cfg.gateway.registry)
        except RegistryError as e:
            log.error("registry not reloaded, keeping the running one: %s", e)
            return
        if self.registry.carry_key_gens(fresh):
            # a key changed in the file without its generation (an edit by hand): the bump goes
            # to the file too, or a restart would give the new key's records the old key's ids;
            # the watch then sees this write and reloads once more, finding nothing to bump
            try:
                _, rekeyed = self.registry.change(lambda reg: None, missing_ok=False)
            except (RegistryError, OSError) as e:
                log.error("registry: new key generation not saved, kept in memory only: %s", e)
                rekeyed = self.registry.replace_all(fresh)
        else:
            rekeyed = self.registry.replace_all(fresh)
        await self.pipeline.reset_nodes(rekeyed)
        log.info("registry reloaded", extra={"nodes": len(self.registry), "rekeyed": len(rekeyed)})

    async def reload_station_tokens(self) -> None:
        """Re-read [basicstation] tokens_file (SIGHUP): a changed or removed token disconnects its
        station. A file that does not load leaves the running tokens as they were."""
        from gateway.config import load_station_tokens

        b = self.cfg.basicstation
        station = next((t for t in self.transports if type(t).__name__ == "BasicStationServer"), None)
        if station is None or b.tokens_file is None:
            return
        try:
            tokens = load_station_tokens(b.tokens_file)
        except ValueError as e:
            log.error("station tokens not reloaded, keeping the running ones: %s", e)
            return
        revoked = await station.set_tokens(tokens)
        log.info("station tokens reloaded", extra={"gateways": len(tokens), "disconnected": revoked})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)

        def on_signal(sig: signal.Signals) -> None:
            if stopping.is_set():  # a second signal: stop waiting for the graceful path
                log.warning("second %s: cancelling the shutdown", sig.name)
                for task in asyncio.all_tasks(loop):
                    if task is not asyncio.current_task(loop):
                        task.cancel()
                return
            log.info("%s received: shutting down", sig.name)
            stopping.set()

        def on_hup() -> None:
            if self.registry is not None and not stopping.is_set():
                for reload in (self.reload_registry, self.reload_station_tokens):
                    task = loop.create_task(reload())
                    reloads.add(task)
                    task.add_done_callback(reloads.discard)

        reloads: set[asyncio.Task] = set()
        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await self.start()
            await stopping.wait()
        finally:
            try:
                await asyncio.wait_for(self.stop(), SHUTDOWN_TIMEOUT_S)
            except (TimeoutError, asyncio.CancelledError):
                log.error("shutdown did not finish in %.0f s", SHUTDOWN_TIMEOUT_S)
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("gateway stopped")


_EVENT_NAMES: dict[int, str] = ENUMS[(m.EVENT, m.E_CODE)]


class NodeLog:
    """Info lines for a technician: a node first heard since start, an alarm raised or cleared.

    Rate limited per kind of line (gateway/logs.py): a district restarting at once cannot
    flood the log; the next line that gets through says how many were left out. The set of
    nodes heard is bounded by the registry (a frame is stored only for a registered node).
    """

    def __init__(self, limiter: logs.RateLimiter | None = None) -> None:
        self.heard: set[int] = set()
        self.limiter = limiter or logs.RateLimiter()

    def on_uplink(self, record: Record, reception: Reception) -> None:
        node = f"{record.node_id:08x}"
        if record.node_id not in self.heard:
            self.heard.add(record.node_id)
            self._info(
                "first_heard",
                "node heard (first time since the gateway started)",
                node=node,
                kind=record.kind,
                via=reception.gateway_id,
                rssi=reception.rssi,
            )
        if record.mtype != m.EVENT:
            return
        body = record.body
        active = body.get(m.E_ACTIVE)
        if active is None and not record.alarm:
            return  # a one-shot report below alarm severity
        code = body.get(m.E_CODE)
        self._info(
            "alarm",
            "alarm cleared" if active == 0 else "alarm raised",
            node=node,
            code=_EVENT_NAMES.get(code, code) if isinstance(code, int) else code,
            zone=body.get(m.E_ZONE, 0),
            severity=body.get(m.E_SEVERITY),
            value=body.get(m.E_VALUE),
        )

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        pass  # a copy of a frame already logged

    def _info(self, key: str, msg: str, **extra: Any) -> None:
        allowed, suppressed = self.limiter.allow(key)
        if allowed:
            if suppressed:
                extra["suppressed"] = suppressed
            log.info(msg, extra=extra)


class Observers:
    """Several observers behind the pipeline's one after-commit seam (downlinks, history)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = observers

    def on_uplink(self, record: Record, reception: Reception) -> None:
        for o in self.observers:
            try:
                o.on_uplink(record, reception)
            except Exception:  # one observer's bug must not starve the others
                log.exception("%s failed after an uplink", type(o).__name__)

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        for o in self.observers:
            try:
                o.on_duplicate(node_id, counter, reception)
            except Exception:
                log.exception("%s failed after a duplicate", type(o).__name__)


async def _quietly(aw: Any, what: str) -> None:
    try:
        await aw
    except Exception as e:  # shutdown goes on: every other part still deserves its stop
        log.error("stopping the %s failed: %r", what, e)


def run(cfg: GatewayConfig) -> None:
    """Run a gateway with `cfg` until SIGTERM or SIGINT (the body of `lumeau gateway`).

    Sets up logging as the config says. A registry, store or socket that
    fails at startup is logged and raised (RegistryError, StoreError, OSError).
    """
    files.set_group(cfg.gateway.file_group or None)
    logs.setup(cfg.log.level, path=cfg.log.file)
    try:
        asyncio.run(Gateway(cfg).run())
    except (RegistryError, StoreError, OSError) as e:
        log.error("gateway failed to start: %s", e)
        raise
