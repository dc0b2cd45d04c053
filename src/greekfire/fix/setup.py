"""FIX sessions built from the settings tree (``fix:`` section): the trader's initiator session, the
exchange's acceptor sessions (one per client CompID), their stores, TLS contexts and the data dictionary.
"""

from __future__ import annotations

import ssl
from datetime import time as dtime

from greekfire.core.errors import ConfigError
from greekfire.core.settings import FixSettings, Settings
from greekfire.fix.dictionary import DataDictionary
from greekfire.fix.session import SessionConfig
from greekfire.fix.store import SessionStore, open_store


def load_dictionary(settings: Settings) -> DataDictionary | None:
    """The data dictionary ``fix.data_dictionary`` names (None when unset: framing checks only)."""
    path = settings.fix.data_dictionary
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError("fix.data_dictionary", str(path), "no such file: give the path of FIX44.xml")
    return DataDictionary.load(path)


def _clock(fs: FixSettings, name: str) -> dtime | None:
    value = getattr(fs, name)
    if value is None:
        return None
    try:
        return dtime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"fix.{name}", value, "a UTC time of day HH:MM[:SS]") from None


def _common(fs: FixSettings) -> dict[str, object]:
    start, end = _clock(fs, "start_time"), _clock(fs, "end_time")
    if (start is None) != (end is None):
        raise ConfigError("fix.end_time" if start else "fix.start_time", None,
                          "set both fix.start_time and fix.end_time, or neither")
    return {"heartbeat_s": fs.heartbeat_s, "reset_on_logon": fs.reset_on_logon,
            "max_latency_s": fs.max_latency_s, "start": start, "end": end}


def initiator_config(fs: FixSettings) -> SessionConfig:
    """The trader's session: ``fix.sender_comp_id`` -> ``fix.exchange_comp_id``."""
    return SessionConfig(fs.sender_comp_id, fs.exchange_comp_id, initiator=True,
                         send_reset_on_logon=fs.reset_on_logon, **_common(fs))  # type: ignore[arg-type]


def exchange_configs(fs: FixSettings) -> list[SessionConfig]:
    """The exchange's sessions: ``fix.exchange_comp_id`` <- each of ``fix.clients``."""
    if len(set(fs.clients)) != len(fs.clients):
        raise ConfigError("fix.clients", fs.clients, "each client CompID once")
    return [SessionConfig(fs.exchange_comp_id, c, **_common(fs)) for c in fs.clients]  # type: ignore[arg-type]


def session_store(settings: Settings, config: SessionConfig, url: str | None = None) -> SessionStore:
    """The store of one session (``fix.store_url``; ``memory`` keeps nothing across restarts)."""
    return open_store(url or settings.fix.store_url, config.session_id, settings.home)


def server_ssl(fs: FixSettings) -> ssl.SSLContext | None:
    """TLS for the exchange when ``fix.tls_cert`` is set."""
    if fs.tls_cert is None:
        return None
    if fs.tls_key is None:
        raise ConfigError("fix.tls_key", None, "set the private key of fix.tls_cert")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(fs.tls_cert, fs.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("fix.tls_cert", str(fs.tls_cert), f"cannot load the certificate/key: {e}") from None
    return ctx


def client_ssl(fs: FixSettings) -> ssl.SSLContext | None:
    """TLS for the trader when ``fix.tls_ca`` is set (the exchange's certificate is verified against it)."""
    if fs.tls_ca is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(fs.tls_ca))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("fix.tls_ca", str(fs.tls_ca), f"cannot load the CA: {e}") from None
    ctx.check_hostname = False  # loopback and private addresses: the CA pins who we talk to
    return ctx
