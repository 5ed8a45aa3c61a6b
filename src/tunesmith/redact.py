"""The one redaction of secrets, used wherever tunesmith writes the config, the environment or an error.

Secrets come from three places: URLs with a password or a credential in the query
(`search.storage: postgresql://user:pw@db/optuna`, `track.mlflow_tracking_uri`), tokens pasted into
values (`hf_...`), and the environment (`HF_TOKEN`, `WANDB_API_KEY`, `MLFLOW_TRACKING_PASSWORD`,
`PGPASSWORD`, ...), whose values may turn up anywhere (an error message, a URL built from them).
Everything written to a run or study folder, the runs index, the trackers and the console goes through
`redact` (one string) or `redact_tree` (a config or any JSON-like value). A `${VAR}` reference is not a
secret and is kept as written, so a saved config that uses one still works when read back.

Imports only the standard library: `tunesmith.config` and `tunesmith.errors` use it and stay light.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["MASK", "SECRET_KEY", "redact", "redact_tree", "has_masked_secret"]

MASK = "***"
# Mapping keys whose values are secrets wherever they appear (a `track.tags` entry `api_key: ...`).
SECRET_KEY = re.compile(r"(token|secret|passw|api[_-]?key|credential|private[_-]?key)", re.I)
# Environment variables whose values are secrets: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY,
# MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, PGPASSWORD and their kin.
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")  # Hugging Face user access tokens
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")
# `scheme://user:PASSWORD@`: the password runs to the last `@` of the URL, since SQLAlchemy takes an
# unencoded `/`, `?` or `#` in it as part of it; a `${VAR}` is kept. (A port followed by a path with an
# `@`, `https://host:443/a@b`, is masked too: safe, if not pretty.)
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:]*:)(.*)@")
# Query parameters that carry credentials: tokens, keys, passwords, and presigned-URL signatures.
_SECRET_QUERY = re.compile(r"(token|secret|passw|key|sig|auth|credential)", re.I)
_VAR_REFERENCE = re.compile(r"^\$(\{\w+\}|\w+)$")
# Short values ('1', 'true') would mask ordinary text; real secrets are long.
_MIN_SECRET_LENGTH = 8


def _env_secrets() -> list[str]:
    return sorted(
        (v for k, v in os.environ.items() if _SECRET_ENV.search(k.upper()) and len(v) >= _MIN_SECRET_LENGTH),
        key=len,
        reverse=True,
    )


def _strip_url(match: re.Match) -> str:
    """A URL's password and its secret-looking query values become ***; the rest is left as written
    (rebuilding it with urlunsplit would turn sqlite://// into sqlite://)."""
    url = match.group(0)
    userinfo = _USERINFO.match(url)
    if userinfo and userinfo.group(2) and not _VAR_REFERENCE.match(userinfo.group(2)):
        url = f"{userinfo.group(1)}{MASK}@{url[userinfo.end() :]}"
    try:
        query = urlsplit(url).query
    except ValueError:  # not parseable as a URL: mask it whole rather than leak it
        return MASK
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if _SECRET_QUERY.search(k) and not _VAR_REFERENCE.match(v) else v) for k, v in pairs]
        if masked != pairs:
            url = url.replace(f"?{query}", "?" + urlencode(masked, safe="*${}"), 1)
    return url


def redact(text: str) -> str:
    """Remove secrets from one string: passwords and tokens in URLs, Hugging Face tokens, and the
    values of secret environment variables (WANDB_API_KEY, HF_TOKEN, ...) wherever they appear."""
    if not text:
        return text
    text = _URL.sub(_strip_url, text)
    text = _HF_TOKEN.sub(MASK, text)
    for secret in _env_secrets():
        text = text.replace(secret, MASK)
    return text


def redact_tree(value: Any) -> Any:
    """`redact` applied to every string of a JSON-like value (a dumped config, a summary, a trial
    record); a mapping entry whose key names a secret (`api_key`, `password`) is masked whole."""
    if isinstance(value, dict):
        return {
            key: (
                MASK
                if isinstance(key, str)
                and SECRET_KEY.search(key)
                and isinstance(item, str)
                and item
                and not _VAR_REFERENCE.match(item)
                else redact_tree(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(item) for item in value)
    if isinstance(value, str):
        return redact(value)
    return value


def has_masked_secret(text: str | None) -> bool:
    """True for a value read back from a saved file whose secret was masked: it cannot be used as is."""
    return bool(text and (f":{MASK}@" in text or f"={MASK}" in text))
