"""`lumeau node release-key|release`: the city's signed firmware releases.

    lumeau node release-key --out FILE
    lumeau node release     --key FILE --replaces VERSION[,VERSION...] [--bundle DIR]
                            [--base DIR] [--version V] [--out FILE]

`release-key` writes a new Ed25519 private key (0600, never overwritten, never printed) and
prints the public key for the nodes' configs ("release_key", 64 hex digits). Keep the
private key off the gateway: a stolen gateway then cannot push firmware.
`release` signs an image of a bundle (`lumeau node build`): every .mpy file, or with
--base (the bundle the nodes run) only those that changed, a delta. Format: SPEC §13;
library: lumeau/release.py.

Exit codes: 0 done, 1 the job failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lumeau import bundle as bundles
from lumeau import release as releases


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
