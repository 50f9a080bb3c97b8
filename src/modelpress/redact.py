"""Secrets kept out of everything modelpress writes or prints: saved configs, the report, cache entries' metadata,
error messages.

A value is secret when its key names one (`token`, `hf_token`, `password`, `api_key`, ...) or when it has the
shape of a Hugging Face access token (`hf_` and 20 or more letters and digits), wherever it sits.
"""

from __future__ import annotations

import re
from typing import Any

# the keys under which Hugging Face libraries take an access token (load kwargs, builder options)
HF_TOKEN_KEYS = ("token", "use_auth_token", "hf_token")
SECRET_KEYS = frozenset({*HF_TOKEN_KEYS, "access_token", "auth_token", "api_key", "apikey", "password", "secret",
                         "client_secret"})
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{20,}")
SHOWN = "(set, not shown)"
# a config's token is refused where it is found: (the problem, how to fix it)
TOKEN_IN_CONFIG = ("an access token does not belong in a config file (configs are saved next to outputs and shared)",
                   "Remove it; set HF_TOKEN or run `hf auth login` instead.")


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and key.lower() in SECRET_KEYS


def looks_secret(value: Any) -> bool:
    """True when `value`, or text anywhere in it, has the shape of an access token."""
    return bool(_TOKEN_SHAPE.search(repr(value)))


def redact(value: Any) -> Any:
    """`value` with each secret replaced by SHOWN (booleans under secret keys, which only switch a login on, kept)."""
    if isinstance(value, dict):
        return {k: SHOWN if is_secret_key(k) and not isinstance(v, bool) and v is not None else redact(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str) and looks_secret(value):
        return _TOKEN_SHAPE.sub(SHOWN, value)
    return value
