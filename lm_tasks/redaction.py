"""Secrets are recorded nowhere: one redaction for every place the lifecycle writes text.

A tracking URI or a store URL may carry credentials (`http://user:password@host`,
`postgresql://user:pw@db/mlflow`, a presigned `?X-Amz-Signature=...`). The process needs
them to connect, but nothing it records may hold them: MLflow params, tags and run names,
config artifacts, `outputs/<name>/config.yaml`, launch requests, logs, error messages.
Every such sink passes its text through `redact`:

- the password of a URL's user-info becomes `***` (`http://user:***@host`), and a
  user-info without a password, often a token, becomes `***` as a whole;
- the value of a secret-looking query parameter becomes `***` (`?token=***`);
- in free text (logs, error messages), any secret seen once (`remember`, called on every
  loaded config) is masked wherever it appears later, even outside a URL.

The supported ways to pass credentials keep them out of the config entirely: MLflow's
environment variables (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or
MLFLOW_TRACKING_TOKEN), the database driver's own (PGPASSWORD), fsspec's storage options
from the environment (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...), or an
interpolation that reads one: `tracking.tracking_uri='http://me:${oc.env:MLFLOW_PW}@host'`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"

# scheme://user:password@host -> the password; it may itself hold '@' (greedy up to the last one).
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^/?#\s]+)@")
# scheme://token@host: a user-info without a password is often a token; the whole of it.
_TOKEN = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<secret>[^:/?#@\s]+)@")
_SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "token", "access_token", "refresh_token", "api_key",
                  "apikey", "access_key", "secret_key", "sig", "signature", "credential", "x-amz-signature",
                  "x-amz-credential", "x-amz-security-token", "sslpassword")
_QUERY = re.compile(r"(?P<head>[?&;](?:%s)=)(?P<secret>[^&;#\s'\"]+)" % "|".join(map(re.escape, _SECRET_PARAMS)),
                    re.IGNORECASE)
_MIN_REMEMBERED = 4  # shorter "secrets" would mask ordinary words

_known: set[str] = set()


def secrets_in(text: str) -> list[str]:
    """The secret parts (passwords, token values) of the URLs in `text`."""
    return [m.group("secret") for pattern in (_USERINFO, _TOKEN, _QUERY) for m in pattern.finditer(text)
            if m.group("secret") != MASK]


def remember(value: Any) -> None:
    """Note every secret in `value` (a string, or a tree of dicts and lists) so that later
    text is masked wherever it repeats one."""
    for text in _strings(value):
        _known.update(s for s in secrets_in(text) if len(s) >= _MIN_REMEMBERED)


def redact(text: str, remembered: bool = True) -> str:
    """`text` with the credentials in its URLs replaced by ***, and (for free text: logs, error
    messages) every remembered secret too. Records of values (params, tags, config files)
    pass `remembered=False`: a short password must not mask part of a run id or a path."""
    if not isinstance(text, str) or not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _TOKEN.sub(lambda m: m.group(0) if m.group("secret") == MASK else f"{m.group('head')}{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m.group('head')}{MASK}", text)
    if remembered:
        for secret in sorted(_known, key=len, reverse=True):  # the longest first: one may contain another
            text = text.replace(secret, MASK)
    return text


def redact_tree(value: Any) -> Any:
    """A copy of a JSON-like record (a request, tags) with the credentials in its URLs masked."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return redact(value, remembered=False) if isinstance(value, str) else value


class RedactingFilter(logging.Filter):
    """Masks secrets in every record a handler emits (the message and its formatted traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_filter() -> None:
    """Put the filter on every handler there is now (the root's, Prefect's console and API
    handlers), so no log line of this process leaves it unredacted."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
