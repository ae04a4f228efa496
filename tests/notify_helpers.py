"""Real receivers for the alarm notification tests: an SMTP server (aiosmtpd) and a webhook
receiver (aiohttp) on 127.0.0.1, both on the test's own event loop, port 0.

The webhook receiver checks what a real one must: the HMAC-SHA256 signature over
timestamp + "." + body, and a timestamp close to now (no replays).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import ssl
import time
import warnings
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP as SmtpProtocol
from aiosmtpd.smtp import AuthResult

WEBHOOK_SECRET = "a-webhook-signing-secret-0123456789"
MAX_SKEW_S = 300


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files: (cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-mx")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    c, k = tmp / "mx.pem", tmp / "mx.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return c, k


class MailServer:
    """aiosmtpd on 127.0.0.1; `stop()` then `start()` again on the same port: an SMTP server down, then up.

    `tls`: None (plain), "starttls" (required before anything) or "tls" (implicit); `login`:
    (user, password) required (over TLS only)."""

    def __init__(
        self, tls: str | None = None, cert: tuple[Path, Path] | None = None, login: tuple[str, str] | None = None
    ) -> None:
        self.messages: list[EmailMessage] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self.tls = tls
        self.login = login
        self.logins: list[str] = []
        self.ctx: ssl.SSLContext | None = None
        if cert is not None:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ctx.load_cert_chain(*cert)

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = self.login is not None and (data.login.decode(), data.password.decode()) == self.login
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)

    def _protocol(self) -> SmtpProtocol:
        kw: dict[str, Any] = {}
        if self.tls == "starttls":
            kw.update(tls_context=self.ctx, require_starttls=True)
        if self.login is not None:
            # aiosmtpd sees only STARTTLS as TLS; with implicit TLS the whole connection is encrypted
            kw.update(authenticator=self._auth, auth_required=True, auth_require_tls=self.tls != "tls")
        with warnings.catch_warnings():  # its warning about AUTH without STARTTLS: implicit TLS is TLS
            warnings.simplefilter("ignore", UserWarning)
            return SmtpProtocol(self, hostname="test-mx", **kw)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        msg["X-Test-Rcpt"] = ",".join(envelope.rcpt_tos)
        self.messages.append(msg)
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            "127.0.0.1",
            self.port,
            reuse_address=True,
            ssl=self.ctx if self.tls == "tls" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def to(self, rcpt: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["X-Test-Rcpt"] == rcpt]


class WebhookReceiver:
    """An aiohttp server verifying each delivery's signature; `status` is what it answers (503: down)."""

    def __init__(self, secret: str = WEBHOOK_SECRET, clock: Any = time.time) -> None:
        self.secret = secret.encode()
        self.clock = clock
        self.deliveries: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.status = 200
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        ts = request.headers.get("X-Lumeau-Timestamp", "")
        sig = request.headers.get("X-Lumeau-Signature", "")
        want = "sha256=" + hmac.new(self.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, want):
            self.refused.append("bad signature")
            return web.Response(status=401)
        if not ts.isdigit() or abs(self.clock() - int(ts)) > MAX_SKEW_S:
            self.refused.append("stale timestamp")
            return web.Response(status=401)
        if self.status != 200:
            return web.Response(status=self.status)
        doc = json.loads(body)
        doc["_delivery"] = request.headers["X-Lumeau-Delivery"]
        doc["_path"] = request.path
        self.deliveries.append(doc)
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self.receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def to(self, name: str) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if d["_path"] == f"/{name}"]


class Clock:
    """A wall clock a test moves by hand (quiet hours, escalation, retries)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s
