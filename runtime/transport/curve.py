"""ZeroMQ CURVE keys for sessions spread over several hosts.

Why: DESIGN.md binds to loopback by default; across hosts the streams must be encrypted and only
the session's own machines may connect. `decnef keys DIR` writes one server and one client key
pair (ZeroMQ's ZPL certificate files, as `zmq.auth` reads them) and an `authorized_clients/`
folder holding the client public keys the server accepts (ZAP authentication; more machines =
more `*.key` files copied there).

Layout of DIR: `server.key`, `server.key_secret`, `client.key`, `client.key_secret`,
`authorized_clients/client.key`. Copy `server.key` + `client.key_secret` (+ `client.key`) to
receiving machines; keep `server.key_secret` on the sending machine only.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from runtime.errors import UserError


@dataclass(frozen=True)
class CurveKeys:
    """Keys for one side of a CURVE connection.

    Server side (publishers: PUB + replay ROUTER): `server_public`, `server_secret` and optionally
    `authorized_dir` (client public keys accepted; None = any client that knows the server key).
    Client side (subscribers: SUB + replay DEALER): `server_public`, `client_public`,
    `client_secret`.
    """

    server_public: bytes
    server_secret: bytes | None = None
    client_public: bytes | None = None
    client_secret: bytes | None = None
    authorized_dir: Path | None = None

    @property
    def is_server(self) -> bool:
        return self.server_secret is not None

    def apply_server(self, sock: zmq.Socket) -> None:
        if self.server_secret is None:
            raise UserError("CURVE: a publisher needs server.key_secret")
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def apply_client(self, sock: zmq.Socket) -> None:
        if self.client_public is None or self.client_secret is None:
            raise UserError("CURVE: a subscriber needs client.key and client.key_secret")
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret


def generate_keys(folder: Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write server and client key pairs (+ authorized_clients/) into `folder`."""
    if not zmq.has("curve"):
        raise UserError("this libzmq was built without CURVE support")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in ("server.key", "server.key_secret", "client.key", "client.key_secret") if (folder / p).exists()]
    if existing and not overwrite:
        raise UserError(f"{folder}: already holds keys ({', '.join(existing)}); use --force to replace them")
    server_pub, server_sec = zmq.auth.create_certificates(str(folder), "server")
    client_pub, client_sec = zmq.auth.create_certificates(str(folder), "client")
    auth = folder / "authorized_clients"
    auth.mkdir(exist_ok=True)
    shutil.copy(client_pub, auth / "client.key")
    for secret in (server_sec, client_sec):
        Path(secret).chmod(0o600)
    return {
        "server_public": Path(server_pub),
        "server_secret": Path(server_sec),
        "client_public": Path(client_pub),
        "client_secret": Path(client_sec),
        "authorized_dir": auth,
    }


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read CURVE key ({exc}); generate keys with `decnef keys DIR`") from None


def load_server_keys(folder: Path) -> CurveKeys:
    folder = Path(folder)
    pub, sec = _load(folder / "server.key_secret")
    if sec is None:
        raise UserError(f"{folder / 'server.key_secret'}: holds no secret key")
    auth = folder / "authorized_clients"
    return CurveKeys(server_public=pub, server_secret=sec, authorized_dir=auth if auth.is_dir() else None)


def load_client_keys(folder: Path) -> CurveKeys:
    folder = Path(folder)
    server_pub, _ = _load(folder / "server.key")
    pub, sec = _load(folder / "client.key_secret")
    if sec is None:
        raise UserError(f"{folder / 'client.key_secret'}: holds no secret key")
    return CurveKeys(server_public=server_pub, client_public=pub, client_secret=sec)


def load_keys(folder: str | Path | None, role: str) -> CurveKeys | None:
    """Keys for `role` ("server" = publisher, "client" = subscriber) from `endpoints.curve_keys`;
    None when no folder is configured (loopback without encryption)."""
    if not folder:
        return None
    if role == "server":
        return load_server_keys(Path(folder))
    if role == "client":
        return load_client_keys(Path(folder))
    raise ValueError(f"role must be 'server' or 'client', got {role!r}")
