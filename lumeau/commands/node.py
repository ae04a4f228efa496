"""`lumeau node ...`: the technician's commands for one node (the argparse side).

    lumeau node build     --target esp32|rp2 --kind KIND [--out DIR] [--frozen]
    lumeau node provision --kind KIND (--registry FILE [--new-registry] | --gateway URL) [--node-id ID]
                          [--board esp32-devkit|rp2-pico|vboard [--radio lora|uart|lorawan]] [--out FILE] [--force]
                          [--template FILE] [--release-key PUBHEX|FILE]
    lumeau node list      (--registry FILE | --gateway URL) [--json]
    lumeau node remove    ID (--registry FILE | --gateway URL)
    lumeau node show      ID --gateway URL [--json]
    lumeau node command   ID OP [ARG...] --gateway URL [--ttl S] [--wait S] [--json]
    lumeau node flash     --port PORT [--bundle DIR] [--config FILE] [--micropython IMAGE.bin]
                          [--gateway URL [--run-check S]]
    lumeau node scan      [--timeout S] [--json]
    lumeau node check     ADDR [--timeout S] [--json]
    lumeau node configure ADDR key=value ... (--config FILE | --registry FILE) [--timeout S]
    lumeau node release-key --out FILE
    lumeau node release   --key FILE --bundle DIR --replaces V[,V] [--base DIR] [--version V] [--out FILE]
    lumeau node update    IMAGE --port PORT [--settle S] [--json] [--gateway URL --node ID [--token T]]
    lumeau node update    IMAGE --ble ADDR (--config FILE | --registry FILE) [--reconnects N] [--json]
    lumeau node expect    (ID | --group NAME) (--image FILE | --version V --bundle HEX | --clear) --gateway URL

Exit codes: 0 done, 1 the job failed (the message says why), 2 bad arguments
(for configure, an unknown setting or a value out of range included).
The work is done by library modules: lumeau/bundle.py (build),
lumeau/provision.py, lumeau/flash.py, lumeau/commands/node_api.py (show,
command: the gateway's API without curl), lumeau/ble_tools.py (BLE commissioning:
scan, check, configure; its docstring says what each does). Tests drive the
async cores of the BLE commands (`scan_command`, `check_command`,
`configure_command`) with bleak's backend seam (ble_tools.Backends).

One file (just over 600 lines): the parsers of every `lumeau node` action and the printing of
the BLE ones, whose work lives in the library modules named above (show and command in
node_api.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lumeau import boards
from lumeau import bundle as bundles
from lumeau.ble_tools import (
    DEFAULT_SCAN_S,
    DEFAULT_TIMEOUT_S,
    KINDS,
    NAMES,
    SETTINGS,
    STATES,
    Backends,
    BleToolError,
    Seen,
    check,
    configure,
    output_text,
    scan,
)
from lumeau.commands.node_api import add_api_actions
from lumeau.commands.node_release import add_release_actions

TOKEN_ENV = "LUMEAU_API_TOKEN"  # the gateway API token, kept out of shell history


def _err(cmd: str, msg: str) -> int:
    print(f"lumeau node {cmd}: {msg}", file=sys.stderr)
    return 1


FROZEN_NOTE = (
    "this machine cannot build the image (it needs the MicroPython source tree and the port's toolchain); "
    "the steps are in {readme}"
)


def cmd_build_frozen(args: argparse.Namespace) -> int:
    out = args.out or bundles.default_frozen_out(args.kind, args.target)
    try:
        fb = bundles.build_frozen(args.kind, args.target, out)
    except bundles.BundleError as e:
        return _err("build", str(e))
    print(
        f"{fb.manifest}: freeze manifest for {len(fb.modules)} modules of the {fb.kind} node "
        f"(each compiles with mpy-cross), for {fb.target}; {', '.join(fb.board_files)} stay on the filesystem"
    )
    print(FROZEN_NOTE.format(readme=out / bundles.FROZEN_README))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    if args.frozen:
        return cmd_build_frozen(args)
    out = args.out or bundles.default_out(args.kind, args.target)
    try:
        b = bundles.build(args.kind, args.target, out)
    except bundles.BundleError as e:
        return _err("build", str(e))
    total = sum(f.size for f in b.files)
    print(
        f"{out}: {len(b.files)} files, {total} bytes, firmware {b.firmware_version} for {b.target} "
        f"({b.march}), .mpy v{b.mpy_version}.{b.mpy_sub_version} (mpy-cross {b.mpy_cross})"
    )
    return 0


def _find_bundle(kind: str | None) -> Path:
    found = sorted(p.parent for p in Path("build").glob("*/" + bundles.MANIFEST))
    if kind is not None:
        found = [p for p in found if p.name.endswith("-" + kind)]
    if len(found) != 1:
        names = ", ".join(str(p) for p in found) or "none in ./build"
        raise bundles.BundleError(f"say which bundle with --bundle (found: {names})")
    return found[0]


def cmd_flash(args: argparse.Namespace) -> int:
    from lumeau import flash as fl

    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        kind = None
        if args.config is not None and args.bundle is None:
            try:
                kind = json.loads(args.config.read_text()).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = None
        bundle_dir = args.bundle or _find_bundle(kind)
        if args.micropython is not None and args.erase:
            if args.config is None:
                return _err("flash", "--erase wipes the node's frame counters: it re-keys the node, give --config")
            fl.rekey(args.config, registry=args.registry, gateway=None if args.registry else args.gateway, token=token)
        if args.micropython is not None:
            if args.gateway and args.config is not None and not args.erase:  # before the image is written
                fl.check_gateway(
                    args.gateway, token, fl.read_config(args.config, bundles.load(bundle_dir))[1]["node_id"]
                )
            target = bundles.load(bundle_dir, verify=False).target
            fl.write_micropython(args.port, args.micropython, target, erase=args.erase, baud=args.baud)
        report = fl.flash(
            args.port,
            bundle_dir,
            args.config,
            connect_timeout=args.timeout,
            settle_s=args.settle,
            gateway=args.gateway,
            token=token,
            hello_timeout=args.hello_timeout,
            run_check_s=args.run_check,
        )
    except bundles.BundleError as e:
        return _err("flash", str(e))
    except fl.FlashError as e:
        return _err("flash", f"{e} [{e.reason}]")
    print(
        f"{args.port}: flashed {report.board}: {len(report.copied)} files copied, {len(report.unchanged)} "
        f"unchanged, {len(report.removed)} removed; {report.confirmed}"
        + (f"; {report.first_report}" if report.first_report else "")
    )
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from lumeau import provision as pv

    template = None
    if args.template is not None:
        try:
            template = json.loads(args.template.read_text())
        except (OSError, ValueError) as e:
            return _err("provision", f"{args.template}: {e}")
        if not isinstance(template, dict):
            return _err("provision", f"{args.template}: must hold a JSON object")
    release_key = None
    if args.release_key is not None:
        from lumeau import release as rl

        try:
            release_key = rl.parse_public_key(args.release_key)
        except rl.ReleaseError as e:
            return _err("provision", str(e))
    try:
        p = pv.provision(
            args.kind,
            args.out,
            node_id=args.node_id,
            registry=args.registry,
            gateway=args.gateway,
            token=args.token or os.environ.get(TOKEN_ENV),
            template=template,
            name=args.name,
            site=args.site,
            lat=args.lat,
            lon=args.lon,
            firmware=args.firmware,
            dev_eui=args.dev_eui,
            force=args.force,
            new_registry=args.new_registry,
            board=args.board,
            radio=args.radio,
            release_key=release_key,
        )
    except pv.ProvisionError as e:
        return _err("provision", str(e))
    for w in p.warnings:
        print(f"lumeau node provision: warning: {w}", file=sys.stderr)
    verb = (
        "re-provisioned: its root key was ROTATED (frames under the old key now fail; flash the new config)"
        if p.rotated
        else "provisioned"
    )
    print(f"node {p.node_id:08x} ({p.kind}) {verb}")
    print(f"  config   {p.config_path} (mode 0600: it holds the key)")
    print(f"  registry {p.registered_in}")
    if args.show_key:
        print(f"  root key {p.root_key.hex()}")
    if args.registry is not None:
        print("  a running gateway reads the changed registry file by itself within a second (or at `kill -HUP`)")
    return 0


def _registry_nodes(args: argparse.Namespace, cmd: str) -> list[dict[str, Any]]:
    """The registered nodes, public fields only (never a key), from the file or the gateway."""
    from gateway.registry import Registry
    from lumeau import provision as pv

    if args.registry is not None:
        if not args.registry.exists():
            raise pv.ProvisionError(f"{args.registry}: no such registry file")
        return [e.public() for e in sorted(Registry.load(args.registry), key=lambda e: e.node_id)]
    token = _token(args)
    pv.check_gateway_url(args.gateway)
    status, doc = pv.api_call(args.gateway, token, "GET", "/nodes")
    if status != 200:
        raise pv.ProvisionError(pv.http_error(status, doc, args.gateway))
    return [{k: v for k, v in n.items() if k in PUBLIC_FIELDS} for n in doc.get("nodes", [])]


PUBLIC_FIELDS = ("id", "kind", "name", "site", "lat", "lon", "firmware", "dev_eui")


def _token(args: argparse.Namespace) -> str:
    from lumeau import provision as pv

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise pv.ProvisionError(f"--gateway needs the API token (--token or ${TOKEN_ENV})")
    return token


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.registry import RegistryError
    from lumeau import provision as pv

    try:
        nodes = _registry_nodes(args, "list")
    except (pv.ProvisionError, RegistryError) as e:
        return _err("list", str(e))
    if args.json:
        print(json.dumps({"nodes": nodes}))
        return 0
    print(f"{'NODE':8s}  {'KIND':10s} {'NAME':24s} {'SITE':20s} LOCATION")
    for n in nodes:
        loc = f"{n['lat']:.5f},{n['lon']:.5f}" if n.get("lat") is not None else "-"
        print(f"{n['id']:8s}  {n['kind']:10s} {n.get('name') or '-':24s} {n.get('site') or '-':20s} {loc}")
    print(f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from gateway.registry import Registry, RegistryError
    from lumeau import provision as pv

    node_id = args.id
    try:
        if args.registry is not None:
            if not args.registry.exists():
                return _err("remove", f"{args.registry}: no such registry file")
            gone, _ = Registry.load(args.registry).change(lambda reg: reg.remove(node_id), missing_ok=False)
            if gone is None:
                return _err("remove", f"node {node_id:08x} is not in {args.registry}")
            where = str(args.registry)
        else:
            token = _token(args)
            pv.check_gateway_url(args.gateway)
            status, doc = pv.api_call(args.gateway, token, "DELETE", f"/nodes/{node_id:08x}")
            if status == 404:
                return _err("remove", f"node {node_id:08x} is not registered at {args.gateway}")
            if status != 204:
                return _err("remove", pv.http_error(status, doc, args.gateway))
            where = args.gateway
    except (pv.ProvisionError, RegistryError) as e:
        return _err("remove", str(e))
    except OSError as e:
        return _err("remove", f"{args.registry}: cannot write: {e.strerror}")
    print(f"node {node_id:08x} removed from {where} (its key is gone: frames from it are no longer accepted)")
    return 0


def _node_id(text: str) -> int:
    from gateway.registry import parse_node_id

    try:
        n = parse_node_id(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n in (0, 0xFFFFFFFF):
        raise argparse.ArgumentTypeError("0 and ffffffff are reserved")
    return n


def add_subcommand(subparsers: Any) -> None:
    node = subparsers.add_parser(
        "node",
        help="build, provision, flash and commission nodes (technician tooling)",
        description="Turn a blank board into a registered, keyed, working node.",
    )
    actions = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")

    b = actions.add_parser("build", help="compile firmware/ and protocol/ to .mpy: a bundle for one node kind")
    b.add_argument(
        "--target",
        choices=sorted(bundles.TARGETS),
        required=True,
        help="board family: esp32 (xtensawin) or rp2 (RP2040, armv6m)",
    )
    b.add_argument("--kind", choices=bundles.KINDS, required=True, help="node kind (its files differ)")
    b.add_argument("--out", type=Path, help="bundle directory (default build/lumeau-VERSION-TARGET-KIND[-frozen])")
    b.add_argument(
        "--frozen",
        action="store_true",
        help="instead, write a MicroPython freeze manifest (manifest.py), the node's sources and the steps "
        "(README.txt) to build a board image with the node code in flash; this machine cannot build the image",
    )
    b.set_defaults(func=cmd_build)

    p = actions.add_parser("provision", help="allocate an id and a key, write the config, register the node")
    p.add_argument("--kind", choices=bundles.KINDS, required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--registry", type=Path, help="the gateway's registry file (gateway offline)")
    where.add_argument(
        "--gateway", help="the gateway's API URL, e.g. http://127.0.0.1:8760 (gateway running; its [api] port)"
    )
    p.add_argument(
        "--token", help=f"API token for --gateway (or ${TOKEN_ENV}): [api] token_file or token in the gateway's config"
    )
    p.add_argument(
        "--node-id",
        type=_node_id,
        help="the id, hex (default: a free random one); an id already registered is re-provisioned with a new key",
    )
    p.add_argument("--out", type=Path, default=Path("config.json"), help="config file to write (default config.json)")
    p.add_argument(
        "--board",
        choices=boards.BOARDS,
        help="write the radio and pins sections that run on this board (lumeau/boards.py; "
        "vboard: the virtual board, lumeau sim board --uart 1=PATH); schema: firmware/README.md",
    )
    p.add_argument(
        "--radio",
        choices=boards.RADIOS,
        help="with --board: lora (default on esp32-devkit and rp2-pico), uart (a wired node, the only one on "
        "vboard) or lorawan (a RAK3172 LoRaWAN modem on the UART, for a city's ChirpStack: give --dev-eui, "
        "and the modem's keys in a --template's radio section or in the modem)",
    )
    p.add_argument(
        "--template",
        type=Path,
        help="site template: a JSON config without node_id/kind/root_key (radio, pins, the app's section); "
        "its keys replace the --board preset's",
    )
    p.add_argument(
        "--release-key",
        metavar="PUBHEX|FILE",
        help="the city's release public key for the node's config (release_key): 64 hex digits as "
        "`lumeau node release-key` prints them, or a file holding them or a PEM Ed25519 public key; "
        "replaces a --template's",
    )
    p.add_argument("--name", default="", help="a name for people, e.g. 'Rue de Rivoli 12'")
    p.add_argument("--site", default="", help="street, park or zone")
    p.add_argument("--lat", type=float, help="latitude, degrees")
    p.add_argument("--lon", type=float, help="longitude, degrees")
    p.add_argument("--firmware", default="", help="firmware version as provisioned")
    p.add_argument(
        "--dev-eui",
        default="",
        metavar="EUI",
        help="the node's LoRaWAN DevEUI (16 hex digits), for a node behind ChirpStack ([chirpstack] in gateway.toml)",
    )
    p.add_argument("--show-key", action="store_true", help="print the root key (it is never printed otherwise)")
    p.add_argument(
        "--force",
        action="store_true",
        help="re-provision a registered --node-id (ROTATES its key) and replace an existing --out file "
        "(its settings are kept unless --template is given; its radio and pins too unless --board is)",
    )
    p.add_argument(
        "--new-registry",
        action="store_true",
        help="create the --registry file if it does not exist (without it, a missing file is an error: a typo)",
    )
    p.set_defaults(func=cmd_provision)

    ls = actions.add_parser("list", help="list the registered nodes (id, kind, name, site; never keys)")
    lw = ls.add_mutually_exclusive_group(required=True)
    lw.add_argument("--registry", type=Path, help="the gateway's registry file")
    lw.add_argument("--gateway", help="the gateway's API URL, e.g. http://127.0.0.1:8760")
    ls.add_argument("--token", help=f"API token for --gateway (or ${TOKEN_ENV})")
    ls.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ls.set_defaults(func=cmd_list)

    rm = actions.add_parser("remove", help="remove a node from the registry (its key goes with it)")
    rm.add_argument("id", type=_node_id, metavar="ID", help="the node id, hex")
    rw = rm.add_mutually_exclusive_group(required=True)
    rw.add_argument("--registry", type=Path, help="the gateway's registry file")
    rw.add_argument("--gateway", help="the gateway's API URL, e.g. http://127.0.0.1:8760")
    rm.add_argument("--token", help=f"API token for --gateway (or ${TOKEN_ENV})")
    rm.set_defaults(func=cmd_remove)

    add_api_actions(actions, _node_id)
    add_release_actions(actions)

    f = actions.add_parser("flash", help="copy a bundle and a config to a board over USB serial and start it")
    f.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    f.add_argument("--bundle", type=Path, help="bundle directory (default: the one in ./build for the config's kind)")
    f.add_argument(
        "--config",
        type=Path,
        help="the node's config file (from lumeau node provision); checked first as the node checks it, "
        "and refused on an unknown key or a missing pin (schema: firmware/README.md)",
    )
    f.add_argument(
        "--micropython", type=Path, metavar="IMAGE.bin", help="first write this MicroPython image with esptool (ESP32)"
    )
    f.add_argument(
        "--erase",
        action="store_true",
        help="with --micropython: erase the whole flash first; re-keys the node first (its counters go)",
    )
    f.add_argument("--registry", type=Path, help="with --erase: the registry that gets the new key")
    f.add_argument("--baud", type=int, default=460800, help="esptool baud rate (default %(default)d)")
    f.add_argument(
        "--gateway",
        help="confirm by the node's HELLO at this gateway API, e.g. http://127.0.0.1:8760 (needs --config), then "
        "that its app runs (--run-check); the API and token are checked before the board is touched",
    )
    f.add_argument(
        "--token",
        help=f"API token for --gateway (or ${TOKEN_ENV}): [api] token_file or token in the gateway's config",
    )
    f.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the board's REPL")
    f.add_argument("--settle", type=float, default=3.0, help="seconds to watch the console after the reset")
    f.add_argument("--hello-timeout", type=float, default=60.0, help="seconds to wait for the HELLO at the gateway")
    f.add_argument(
        "--run-check",
        type=float,
        default=20.0,
        metavar="S",
        help="with --gateway: after the HELLO, seconds the app must run without an app_exception alarm "
        "(fails with the exception's type; 0 skips; default %(default)g)",
    )
    f.set_defaults(func=cmd_flash)

    add_ble_actions(actions)


# -- BLE commissioning: output ---------------------------------------------------------------------


def _fields(fields: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    parts = []
    for name, f in fields.items():
        if name in skip:
            continue
        v = f["value"]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):  # flags
            v = "+".join(v) if v else "none"
        elif isinstance(v, list):  # per-zone values, zone 1 first (None: no sensor)
            v = "/".join("-" if x is None else str(x) for x in v)
        parts.append(f"{name} {v}{' ' + f['unit'] if f['unit'] else ''}")
    return ", ".join(parts)


def _when(t: Any) -> str:
    if not isinstance(t, int) or t <= 0:
        return "time unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _duration(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "?"
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    mnt = s // 60
    return (f"{d} d " if d else "") + f"{h} h {mnt} min"


def print_check(seen: Seen, status: dict[str, Any], alarms: list[dict[str, Any]], out: TextIO) -> None:
    st = status["status"]
    w = out.write
    w(
        f"node {status['node']} ({status['kind']}) at {seen.address}, RSSI {seen.rssi} dBm, "
        f"firmware {status['firmware']}\n"
    )
    n_open = st.get("open_alarms", {}).get("value", seen.open_alarms)
    w(
        f"state       {status['state']}"
        + (f", {n_open} open alarm{'s' if n_open != 1 else ''}" if n_open else "")
        + "\n"
    )
    clock = st.get("time", {}).get("value")
    w(
        f"uptime      {_duration(st.get('uptime', {}).get('value'))}; node clock "
        f"{_when(clock) if clock else 'not set'}\n"
    )
    if "report" in status:
        w(f"{status['report_type']:11s} {_fields(status['report'])}\n")
    rest = _fields(st, skip=("uptime", "time", "open_alarms"))
    if rest:
        w(f"status      {rest}\n")
    c = status.get("counters")
    if c:
        w("counters    " + ", ".join(f"{k} {v}" for k, v in c.items()) + "\n")
    if status.get("last_error"):
        w(f"last error  {status['last_error']}\n")
    if not alarms:
        w("alarms      none since boot\n")
        return
    w(f"alarms      last {len(alarms)} since boot, oldest first:\n")
    for a in alarms:
        code = a["code"]["value"]
        sev = a.get("severity", {}).get("value", "?")
        active = "raised" if a.get("active", {}).get("value", 1) else "cleared"
        zone = a.get("zone", {}).get("value")
        extra = f" zone {zone}" if zone else ""
        w(
            f"  {_when(a.get('time', {}).get('value'))}  {code!s:20s} {sev!s:8s} {active:7s} "
            f"value {a.get('value', {}).get('value', 0)}{extra}\n"
        )


# -- commands ----------------------------------------------------------------------------------------


def _fail(cmd: str, e: BleToolError, err: TextIO) -> int:
    err.write(f"lumeau node {cmd}: {e} [{e.reason}]\n")
    return 2 if e.reason == "bad_setting" else 1


async def scan_command(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None, backends: Backends | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        nodes = await scan(args.timeout, backends)
    except BleToolError as e:
        return _fail("scan", e, err)
    if args.json:
        out.write(json.dumps({"nodes": [s.json() for s in nodes]}) + "\n")
        return 0
    if not nodes:
        out.write(f"no Lumeau node in reach (scanned {args.timeout:g} s)\n")
        return 0
    out.write(
        f"{'ADDRESS':18s} {'NODE':8s}  {'KIND':10s} {'STATE':9s} {'ALARMS':>6s}  {'OUTPUT':18s} "
        f"{'FIRMWARE':9s} {'RSSI':>8s}\n"
    )
    for s in nodes:
        out.write(
            f"{s.address:18s} {s.node_id:08x}  {KINDS.get(s.kind, '?'):10s} {STATES.get(s.state, '?'):9s} "
            f"{s.open_alarms:6d}  {output_text(s.kind, s.output):18s} {s.firmware:9s} {s.rssi:4d} dBm\n"
        )
    out.write(f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} in reach\n")
    return 0


async def check_command(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None, backends: Backends | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        seen, status, alarms = await check(args.addr, args.timeout, backends)
    except BleToolError as e:
        return _fail("check", e, err)
    if args.json:
        out.write(json.dumps({"advertised": seen.json(), "status": status, "alarms": alarms}) + "\n")
    else:
        print_check(seen, status, alarms, out)
    return 0


async def configure_command(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None, backends: Backends | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        done = await configure(
            args.addr,
            args.settings,
            config=args.config,
            registry=args.registry,
            timeout=args.timeout,
            backends=backends,
        )
    except BleToolError as e:
        return _fail("configure", e, err)
    applied = [f"{NAMES[k]}={v}" for k, v in done.settings.items() if not done.refused >> k & 1]
    refused = [f"{NAMES[k]}={v}" for k, v in done.settings.items() if done.refused >> k & 1]
    node = f"node {done.seen.node_id:08x}"
    if applied:
        out.write(f"{node}: applied {' '.join(applied)} (confirmed by the node, signed with its key)\n")
    if done.clock is not None:
        out.write(f"{node}: clock set to {_when(done.clock)} (confirmed by the node, signed with its key)\n")
    if refused:
        err.write(
            f"lumeau node configure: {node} refused {' '.join(refused)} (out of its own limits: an older "
            "firmware?) [refused]\n"
        )
        return 1
    return 0


def _sync(core: Callable[..., Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(core(args))

    return run


def add_ble_actions(actions: Any) -> None:
    """Register scan, check and configure in the `lumeau node` group."""
    s = actions.add_parser("scan", help="list the Lumeau nodes in BLE reach: id, kind, state, signal")
    s.add_argument("--timeout", type=float, default=DEFAULT_SCAN_S, help="seconds to scan (default %(default)g)")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    s.set_defaults(func=_sync(scan_command))

    c = actions.add_parser("check", help="connect to a node over BLE: live status and last alarms")
    c.add_argument("addr", metavar="ADDR", help="Bluetooth address, or the node id in hex")
    c.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to find, connect and read (default %(default)g)",
    )
    c.add_argument("--json", action="store_true", help="one JSON object instead of text")
    c.set_defaults(func=_sync(check_command))

    g = actions.add_parser(
        "configure",
        help="change a node's settings over BLE, authenticated with its key",
        description="Settings (SPEC §5 CONFIG): "
        + ", ".join(
            f"{n} ({SETTINGS[n][1][0]}..{SETTINGS[n][1][1]}{' ' + SETTINGS[n][3] if SETTINGS[n][3] else ''})"
            for n in SETTINGS
        )
        + "; and clock=now (a TIME frame with this computer's clock, UTC). The tool first opens a session "
        "with the node (SPEC §11): nothing is sealed unless the node's answer verifies with its key.",
    )
    g.add_argument("addr", metavar="ADDR", help="Bluetooth address, or the node id in hex")
    g.add_argument(
        "settings",
        metavar="KEY=VALUE",
        nargs="+",
        help="e.g. report_interval=600; clock=now sets the node's clock from this computer's (UTC)",
    )
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the node's config file from lumeau node provision (holds its key)")
    where.add_argument("--registry", type=Path, help="the gateway's registry file (holds the keys)")
    g.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to find and connect, and again for the answer (default %(default)g)",
    )
    g.set_defaults(func=_sync(configure_command))
