"""`lumeau node release-key|release`: the city's signed firmware releases.

    lumeau node release-key --out FILE
    lumeau node release     --key FILE --replaces VERSION[,VERSION...] [--bundle DIR]
                            [--base DIR] [--version V] [--out FILE]
    lumeau node update      IMAGE --port PORT [--settle S] [--json]

`release-key` writes a new Ed25519 private key (0600, never overwritten, never printed) and
prints the public key for the nodes' configs ("release_key", 64 hex digits). Keep the
private key off the gateway: a stolen gateway then cannot push firmware.
`release` signs an image of a bundle (`lumeau node build`): every .mpy file, or with
--base (the bundle the nodes run) only those that changed, a delta. Format: SPEC §13;
library: lumeau/release.py. `update` installs an image on a node over its USB serial
(lumeau/update.py): resumable upload, the node's own updater verifies and stages it, then
the board resets into the new release on trial.

Exit codes: 0 done, 1 the job failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lumeau import bundle as bundles
from lumeau import release as releases
from protocol import nodelora as lora


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


def cmd_update(args: argparse.Namespace) -> int:
    from lumeau import update as updates

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
        "update", help="install a signed release (.lup) on a node over USB serial (resumable; the node verifies it)"
    )
    u.add_argument("image", type=Path, help="the release image (lumeau node release)")
    u.add_argument("--port", required=True, help="the node's serial port (/dev/ttyUSB0, /dev/ttyACM0)")
    u.add_argument("--settle", type=float, default=3.0, help="seconds to watch the console after the reset")
    u.add_argument("--json", action="store_true", help="one JSON object: version, bundle, bytes sent, resumed at")
    u.set_defaults(func=cmd_update)
