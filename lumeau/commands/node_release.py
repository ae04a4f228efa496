"""`lumeau node release-key|release`: the city's signed firmware releases.

    lumeau node release-key --out FILE
    lumeau node release     --key FILE --replaces VERSION[,VERSION...] [--bundle DIR]
                            [--base DIR] [--version V] [--out FILE]
    lumeau node update      IMAGE --port PORT [--settle S] [--json] [--gateway URL --node ID [--token T]]
    lumeau node update      IMAGE --ble ADDR (--config FILE | --registry FILE) [--timeout S]
                            [--reconnects N] [--json] [--gateway URL [--token T]]
    lumeau node expect      (ID | --group NAME) (--image FILE | --version V --bundle HEX | --clear)
                            --gateway URL [--token T] [--json]

`release-key` writes a new Ed25519 private key (0600, never overwritten, never printed) and
prints the public key for the nodes' configs ("release_key", 64 hex digits). Keep the
private key off the gateway: a stolen gateway then cannot push firmware.
`release` signs an image of a bundle (`lumeau node build`): every .mpy file, or with
--base (the bundle the nodes run) only those that changed, a delta. Format: SPEC §13;
library: lumeau/release.py. `update` installs an image on a node over its USB serial
(lumeau/update.py): resumable upload, the node's own updater verifies and stages it, then
the board resets into the new release on trial; with --ble it does the same over Bluetooth LE
from a laptop in reach (lumeau/ble_update.py: ADDR is the node's address or id as for `lumeau
node check`; authenticated with the node's key, resumed from the node's offset after a lost
link); with --gateway and --node (implied by --ble) it then tells the
gateway which release the node should now run (PUT /nodes/{id}/release). `expect` tells the
gateway that for a node or a group without installing anything (an update over LoRa, a node
updated by another hand): from an image's manifest (its version and bundle id) or given.
The gateway then reports a node whose HELLO comes back with another bundle id, a release
that rolled itself back (gateway/releases.py: API, /metrics, log, web page). The token comes
from --token or $LUMEAU_API_TOKEN.

Exit codes: 0 done, 1 the job failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from lumeau import bundle as bundles
from lumeau import release as releases
from protocol import nodelora as lora

DEFAULT_BLE_TIMEOUT_S = 10.0  # ble_tools.DEFAULT_TIMEOUT_S (not imported here: bleak loads only for --ble)
DEFAULT_RECONNECTS = 5  # ble_update.DEFAULT_RECONNECTS


def _err(cmd: str, msg: str) -> int:
    print(f"lumeau node {cmd}: {msg}", file=sys.stderr)
    return 1


def cmd_release_key(args: argparse.Namespace) -> int:
    try:
        pub = releases.generate_key(args.out)
    except (releases.ReleaseError, OSError) as e:
        return _err("release-key", str(e))
    print(f"{args.out}: new release key {releases.key_id(pub)} (private, mode 600: keep it off the gateway)")
    print(f'public key for the nodes\' config: "release_key": "{pub.hex()}"')
    print(f"  (lumeau node provision ... --release-key {pub.hex()} puts it there)")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    replaces = [v.strip() for v in args.replaces.split(",") if v.strip()]
    try:
        key = releases.load_key(args.key)
        bundle = bundles.load(args.bundle)
        base = bundles.load(args.base) if args.base else None
        r = releases.build(bundle, key, replaces, base, args.version)
    except (releases.ReleaseError, bundles.BundleError) as e:
        return _err("release", str(e))
    m = r.manifest
    out = args.out or Path(f"{args.bundle}-{m['version']}{'-delta' if base else ''}.lup")
    out.write_bytes(r.image)
    carried = sum(1 for f in m["files"] if f[3])
    print(
        f"{out}: release {m['version']} for {m['target']} {m['kind']} (replaces {', '.join(replaces)}), "
        f"{carried} of {len(m['files'])} files, {len(r.image)} bytes "
        f"({r.carried_bytes} of {r.full_bytes} file bytes), bundle {m['bundle'][:6]}, key {m['key']}"
    )
    # what it would cost on the air, one copy without repairs (bench/release_verify.py)
    per = lora.max_payload(9) - 15
    frames = -(-len(r.image) // per)
    air_s = frames * lora.airtime_ms(per + 15, 9) / 1000
    print(f"  over LoRa at SF9: {frames} frames, {air_s:.0f} s of airtime ({air_s / 36:.1f} h at a 1 % duty cycle)")
    return 0


def _tell_gateway(args: argparse.Namespace, path: str, expected: dict[str, str] | None) -> dict[str, Any]:
    """PUT (DELETE when None) the expected release at the gateway; its answer, GroupCliError otherwise."""
    from lumeau.commands.group import gateway_call, refusal

    method = "DELETE" if expected is None else "PUT"
    status, doc = gateway_call(args, method, path, expected)
    if status != 200:
        raise refusal(status, doc, args)
    return doc


def _node_id(value: str) -> int:
    from gateway.registry import parse_node_id

    try:
        return parse_node_id(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _manifest_release(image: Path) -> dict[str, str]:
    from lumeau import update as updates

    try:
        m = updates.describe(image.read_bytes())
    except OSError as e:
        raise updates.UpdateError("bad_image", f"{image}: {e.strerror}") from None
    return {"version": m["version"], "bundle": m["bundle"]}


def cmd_update(args: argparse.Namespace) -> int:
    if args.ble is not None:
        return asyncio.run(update_ble_command(args))
    return _update_serial(args)


async def update_ble_command(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None, backends: Any = None
) -> int:
    """`lumeau node update IMAGE --ble ADDR`: the async core (tests pass bleak backends: ble_tools.Backends)."""
    from lumeau import ble_update
    from lumeau.ble_tools import BleToolError
    from lumeau.commands.group import GroupCliError

    out, err = out or sys.stdout, err or sys.stderr
    if args.port is not None or args.node is not None:
        err.write("lumeau node update: --ble goes without --port and --node (the node says its id)\n")
        return 2
    if (args.config is None) == (args.registry is None):
        err.write("lumeau node update: --ble needs the node's key: --config FILE or --registry FILE (one)\n")
        return 2

    def log(s: str) -> None:
        if not args.json:
            out.write(s + "\n")

    try:
        r = await ble_update.update(
            args.ble,
            args.image,
            config=args.config,
            registry=args.registry,
            timeout=args.timeout,
            reconnects=args.reconnects,
            backends=backends,
            log=log,
        )
    except BleToolError as e:
        if args.json:
            out.write(json.dumps({"error": e.reason, "message": str(e)}) + "\n")
        err.write(f"lumeau node update: {e} [{e.reason}]\n")
        return 1
    node = f"node {r.seen.node_id:08x}"
    if args.json:
        out.write(json.dumps(r.json()) + "\n")
    else:
        rate = r.sent_bytes / r.seconds if r.seconds else 0.0
        out.write(
            f"{node}: {r.version} installed on trial ({r.size} bytes, {r.sent_bytes} sent in {r.seconds:.1f} s, "
            f"{rate:.0f} B/s, {r.reconnects} reconnection{'s' if r.reconnects != 1 else ''}); it resets into it and "
            "commits it once the gateway hears it\n"
        )
    if args.gateway is not None:
        try:
            _tell_gateway(args, f"/nodes/{r.seen.node_id:08x}/release", {"version": r.version, "bundle": r.bundle})
        except GroupCliError as e:
            err.write(f"lumeau node update: installed, but the gateway was not told ({e}); run `lumeau node expect`\n")
            return 1
        if not args.json:
            out.write(f"gateway {args.gateway}: {node} expected on {r.version} (rollbacks reported)\n")
    return 0


def _update_serial(args: argparse.Namespace) -> int:
    from lumeau import update as updates
    from lumeau.commands.group import GroupCliError

    if args.port is None:
        return _err("update", "give --port PORT (USB serial) or --ble ADDR (Bluetooth LE)")
    if args.config is not None or args.registry is not None:
        return _err("update", "--config and --registry are for --ble (the serial path needs no key)")
    if (args.gateway is None) != (args.node is None):
        return _err("update", "--gateway and --node go together (the gateway is told which node runs what)")
    log = (lambda _s: None) if args.json else print
    try:
        r = updates.update(args.port, args.image, settle_s=args.settle, log=log)
    except updates.UpdateError as e:
        if args.json:
            print(json.dumps({"error": e.reason, "message": str(e)}))
        return _err("update", str(e))
    if args.json:
        print(updates.report_json(r))
    else:
        print(f"{args.port}: {r.version} installed on trial; the node commits it once the gateway hears it")
        if "Traceback" in r.console:
            print(f"the board printed a traceback after the reset:\n{r.console[-800:]}")
    if args.gateway is not None:
        try:
            expected = _manifest_release(args.image)
            _tell_gateway(args, f"/nodes/{args.node:08x}/release", expected)
        except (GroupCliError, updates.UpdateError) as e:
            return _err("update", f"installed, but the gateway was not told ({e}); run `lumeau node expect`")
        if not args.json:
            print(
                f"gateway {args.gateway}: node {args.node:08x} expected on {expected['version']} (rollbacks reported)"
            )
    return 0


def cmd_expect(args: argparse.Namespace) -> int:
    from lumeau import update as updates
    from lumeau.commands.group import GroupCliError

    if (args.node is None) == (args.group is None):
        return _err("expect", "give a node ID or --group NAME (one of them)")
    given = [x for x in (args.image, args.version or args.bundle, args.clear or None) if x]
    if len(given) != 1 or (args.version is None) != (args.bundle is None):
        return _err("expect", "give --image FILE, or --version V with --bundle HEX, or --clear (one of them)")
    try:
        if args.clear:
            expected = None
        elif args.image is not None:
            expected = _manifest_release(args.image)
        else:
            expected = {"version": args.version, "bundle": args.bundle.lower()}
        if args.group is not None:
            if args.clear:
                return _err("expect", "--clear is for one node (DELETE /nodes/{id}/release)")
            doc = _tell_gateway(args, f"/groups/{args.group}/release", expected)
            states = doc.get("nodes", {})
        else:
            node = f"{args.node:08x}"
            doc = _tell_gateway(args, f"/nodes/{node}/release", expected)
            states = {node: (doc.get("release") or {}).get("state")}
    except (GroupCliError, updates.UpdateError) as e:
        return _err("expect", str(e))
    if args.json:
        print(json.dumps(doc))
        return 0
    what = "no release expected" if expected is None else f"expected on {expected['version']}"
    print(f"{what} (bundle {expected['bundle'][:6]})" if expected else what)
    for n, state in states.items():
        print(f"  {n}  {state or '-'}")
    return 0


def add_release_actions(actions: Any) -> None:
    k = actions.add_parser(
        "release-key", help="generate the city's Ed25519 release key (0600, never printed); prints the public key"
    )
    k.add_argument("--out", type=Path, required=True, help="private key file to create (refused if it exists)")
    k.set_defaults(func=cmd_release_key)

    r = actions.add_parser("release", help="sign a release image (.lup) of a bundle, full or a delta (--base)")
    r.add_argument("--key", type=Path, required=True, help="the release key's private file (release-key)")
    r.add_argument("--bundle", type=Path, required=True, help="the bundle to release (lumeau node build)")
    r.add_argument("--replaces", required=True, help="comma-separated versions this release may replace")
    r.add_argument("--base", type=Path, help="the bundle the nodes run: carry only the files that changed")
    r.add_argument("--version", help="release version (default: the bundle's firmware version)")
    r.add_argument("--out", type=Path, help="image file (default BUNDLE-VERSION[-delta].lup)")
    r.set_defaults(func=cmd_release)

    u = actions.add_parser(
        "update",
        help="install a signed release (.lup) on a node over USB serial or Bluetooth LE (resumable; the node "
        "verifies it)",
    )
    u.add_argument("image", type=Path, help="the release image (lumeau node release)")
    how = u.add_mutually_exclusive_group(required=True)
    how.add_argument("--port", help="the node's serial port (/dev/ttyUSB0, /dev/ttyACM0)")
    how.add_argument(
        "--ble",
        metavar="ADDR",
        help="over Bluetooth LE: the node's address, or its node id in hex (as for lumeau node check); "
        "needs --config or --registry for its key",
    )
    u.add_argument("--config", type=Path, help="with --ble: the node's config file (lumeau node provision: its key)")
    u.add_argument("--registry", type=Path, help="with --ble: the gateway's registry file (holds the keys)")
    u.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_BLE_TIMEOUT_S,
        help="with --ble: seconds to find and connect, and for each answer (default %(default)g)",
    )
    u.add_argument(
        "--reconnects",
        type=int,
        default=DEFAULT_RECONNECTS,
        help="with --ble: lost links to reconnect and resume after (default %(default)d)",
    )
    u.add_argument("--settle", type=float, default=3.0, help="seconds to watch the console after the reset (serial)")
    u.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: version, bundle, bytes sent, resumed at (with --ble: node, seconds, reconnects)",
    )
    u.add_argument(
        "--gateway",
        help="once installed, tell this gateway's API (e.g. http://127.0.0.1:8760) the node should run this "
        "release, so it reports a rollback; needs --node",
    )
    u.add_argument("--node", type=_node_id, help="the node's id, hex (with --gateway and --port)")
    u.add_argument("--token", help="API token for --gateway (or $LUMEAU_API_TOKEN)")
    u.set_defaults(func=cmd_update)

    e = actions.add_parser(
        "expect",
        help="tell the gateway which release a node or a group should run (from an image's manifest); "
        "it then reports a node that rolled back",
    )
    e.add_argument("node", nargs="?", type=_node_id, help="the node's id, hex (or --group)")
    e.add_argument("--group", help="every member of this group")
    e.add_argument("--image", type=Path, help="a release image (.lup): its manifest's version and bundle id")
    e.add_argument("--version", help="the release's version (with --bundle, without --image)")
    e.add_argument("--bundle", help="the release's bundle id, 64 hex digits (with --version)")
    e.add_argument("--clear", action="store_true", help="forget the node's expected release (no rollback reported)")
    e.add_argument("--gateway", required=True, help="the gateway's API URL, e.g. http://127.0.0.1:8760")
    e.add_argument("--token", help="API token (or $LUMEAU_API_TOKEN)")
    e.add_argument("--json", action="store_true", help="the gateway's answer as JSON")
    e.set_defaults(func=cmd_expect)
