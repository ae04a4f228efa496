"""`lumeau node ...`: the technician's commands for one node.

    lumeau node build     --target esp32|rp2 --kind KIND [--out DIR]
    lumeau node provision --kind KIND (--registry FILE | --gateway URL) [--node-id ID] [--out FILE]
    lumeau node flash     --port PORT [--bundle DIR] [--config FILE] [--micropython IMAGE.bin]
    lumeau node scan | check ADDR | configure ADDR key=value ...   (BLE, lumeau/ble_tools.py)

Exit codes: 0 done, 1 the job failed (the message says why), 2 bad arguments.
Modules: lumeau/bundle.py (build), lumeau/provision.py, lumeau/flash.py, lumeau/ble_tools.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lumeau import bundle as bundles

TOKEN_ENV = "LUMEAU_API_TOKEN"  # the gateway API token, kept out of shell history


def _err(cmd: str, msg: str) -> int:
    print(f"lumeau node {cmd}: {msg}", file=sys.stderr)
    return 1


def cmd_build(args: argparse.Namespace) -> int:
    out = args.out or bundles.default_out(args.kind, args.target)
    try:
        b = bundles.build(args.kind, args.target, out)
    except bundles.BundleError as e:
        return _err("build", str(e))
    total = sum(f.size for f in b.files)
    print(f"{out}: {len(b.files)} files, {total} bytes, firmware {b.firmware_version} for {b.target} "
          f"({b.march}), .mpy v{b.mpy_version}.{b.mpy_sub_version} (mpy-cross {b.mpy_cross})")
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
        if args.micropython is not None:
            target = bundles.load(bundle_dir, verify=False).target
            fl.write_micropython(args.port, args.micropython, target, erase=args.erase, baud=args.baud)
        report = fl.flash(args.port, bundle_dir, args.config, connect_timeout=args.timeout, settle_s=args.settle,
                          gateway=args.gateway, token=token, hello_timeout=args.hello_timeout)
    except bundles.BundleError as e:
        return _err("flash", str(e))
    except fl.FlashError as e:
        return _err("flash", f"{e} [{e.reason}]")
    print(f"{args.port}: flashed {report.board}: {len(report.copied)} files copied, {len(report.unchanged)} "
          f"unchanged, {len(report.removed)} removed; {report.confirmed}")
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
    try:
        p = pv.provision(args.kind, args.out, node_id=args.node_id, registry=args.registry, gateway=args.gateway,
                         token=args.token or os.environ.get(TOKEN_ENV), template=template, name=args.name,
                         site=args.site, lat=args.lat, lon=args.lon, firmware=args.firmware)
    except pv.ProvisionError as e:
        return _err("provision", str(e))
    verb = "re-provisioned: its root key was ROTATED (frames under the old key now fail; flash the new config)" \
        if p.rotated else "provisioned"
    print(f"node {p.node_id:08x} ({p.kind}) {verb}")
    print(f"  config   {p.config_path} (mode 0600: it holds the key)")
    print(f"  registry {p.registered_in}")
    if args.show_key:
        print(f"  root key {p.root_key.hex()}")
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


def add_subcommand(subparsers) -> None:
    node = subparsers.add_parser("node", help="build, provision and flash nodes (technician tooling)",
                                 description="Turn a blank board into a registered, keyed, working node.")
    actions = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")

    b = actions.add_parser("build", help="compile firmware/ and protocol/ to .mpy: a bundle for one node kind")
    b.add_argument("--target", choices=sorted(bundles.TARGETS), required=True,
                   help="board family: esp32 (xtensawin) or rp2 (RP2040, armv6m)")
    b.add_argument("--kind", choices=bundles.KINDS, required=True, help="node kind (its files differ)")
    b.add_argument("--out", type=Path, help="bundle directory (default build/lumeau-VERSION-TARGET-KIND)")
    b.set_defaults(func=cmd_build)

    p = actions.add_parser("provision", help="allocate an id and a key, write the config, register the node")
    p.add_argument("--kind", choices=bundles.KINDS, required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--registry", type=Path, help="the gateway's registry file (gateway offline)")
    where.add_argument("--gateway", help="the gateway's API URL, e.g. http://127.0.0.1:8080 (gateway running)")
    p.add_argument("--token", help=f"API token for --gateway (or ${TOKEN_ENV})")
    p.add_argument("--node-id", type=_node_id, help="the id, hex (default: a free random one); an id already "
                   "registered is re-provisioned with a new key")
    p.add_argument("--out", type=Path, default=Path("config.json"), help="config file to write (default config.json)")
    p.add_argument("--template", type=Path, help="site template: a JSON config without node_id/kind/root_key "
                   "(radio, pins, the app's section)")
    p.add_argument("--name", default="", help="a name for people, e.g. 'Rue de Rivoli 12'")
    p.add_argument("--site", default="", help="street, park or zone")
    p.add_argument("--lat", type=float, help="latitude, degrees")
    p.add_argument("--lon", type=float, help="longitude, degrees")
    p.add_argument("--firmware", default="", help="firmware version as provisioned")
    p.add_argument("--show-key", action="store_true", help="print the root key (it is never printed otherwise)")
    p.set_defaults(func=cmd_provision)

    f = actions.add_parser("flash", help="copy a bundle and a config to a board over USB serial and start it")
    f.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    f.add_argument("--bundle", type=Path, help="bundle directory (default: the one in ./build for the config's kind)")
    f.add_argument("--config", type=Path, help="the node's config file (from lumeau node provision)")
    f.add_argument("--micropython", type=Path, metavar="IMAGE.bin",
                   help="first write this MicroPython image with esptool (ESP32)")
    f.add_argument("--erase", action="store_true", help="with --micropython: erase the whole flash first")
    f.add_argument("--baud", type=int, default=460800, help="esptool baud rate (default %(default)d)")
    f.add_argument("--gateway", help="confirm by the node's HELLO at this gateway API (needs --config)")
    f.add_argument("--token", help=f"API token for --gateway (or ${TOKEN_ENV})")
    f.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the board's REPL")
    f.add_argument("--settle", type=float, default=3.0, help="seconds to watch the console after the reset")
    f.add_argument("--hello-timeout", type=float, default=60.0, help="seconds to wait for the HELLO at the gateway")
    f.set_defaults(func=cmd_flash)

    from lumeau import ble_tools

    ble_tools.add_actions(actions)
