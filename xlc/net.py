"""Fail in seconds on a server URL nothing answers at, where a client library would retry for minutes.

MLflow retries a refused connection 7 times with exponential backoff (about 4 minutes) and Ray's job client
several seconds before a 300-line traceback; one request with a short timeout tells the user at once.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.parse
import urllib.request

from xlc.errors import ConfigError

TIMEOUT_S = 5.0


def is_http(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in ("http", "https")


def check_answers(url: str, option: str, expected: str) -> None:
    """Raise `ConfigError` naming `option` and `url` unless it is an http(s) URL at which an HTTP server answers.

    Any HTTP status is an answer (a 401 or 404 still proves the address), and so is a TLS handshake; a refused
    or timed-out connection, an unknown host or a non-HTTP reply is not. `expected` says what belongs there.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # a port out of range or not a number raises here
    except ValueError as e:
        raise ConfigError(f"{option} {url}: {e}; expected {expected}") from None
    if not is_http(url) or not parts.hostname:
        raise ConfigError(f"{option} {url}: not an http:// or https:// URL; expected {expected}")
    try:
        urllib.request.urlopen(url, timeout=TIMEOUT_S).close()
    except urllib.error.HTTPError:  # (a URLError subclass) the server answered with an error status
        return
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise ConfigError(f"{option} {url}: nothing answers there ({reason}); expected {expected}") from None
    except (OSError, http.client.HTTPException) as e:  # a timeout while reading, or a reply that is not HTTP
        raise ConfigError(f"{option} {url}: no HTTP answer there ({e or type(e).__name__}); expected {expected}") from None
