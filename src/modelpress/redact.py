"""Secrets kept out of everything modelpress writes or prints: saved configs, the report, cache entries' metadata,
error messages.

A value is secret when its key names one, or when it has the shape of one, wherever it sits:
- keys: read as words (`AZURE_OPENAI_API_KEY`, `apiKey`, `HFToken`, `sas-token` alike), a key is secret when a
  word says so (`password`, `secret`, `credentials`, `authorization`, ...) or the words run together do
  (`DBPASSWORD`, `CONNECTION_STRING`), when it ends in `token` after no special-token word (`hf_token`, `sas_token`,
  but not `pad_token` or `max_new_tokens`), in `auth` or `_PASS`, or in `key` (or `key_id`) after a word that makes
  it a credential (`api_key`, `AWS_ACCESS_KEY_ID`, but not `label_key`);
- values: Hugging Face, OpenAI and GitHub tokens, AWS access key ids, `Bearer ...` and Basic Authorization headers,
  a URL's password (`sftp://user:PASSWORD@host`), a signature or token in a URL's query (`sig=`,
  `X-Amz-Signature=`, `token=`, `api_key=`) and an Azure connection string's `AccountKey=` are replaced inside any
  text.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# the keys under which Hugging Face libraries take an access token (load kwargs, builder options)
HF_TOKEN_KEYS = ("token", "use_auth_token", "hf_token")
# a word anywhere in a key that makes its value a secret
SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "secrets", "credential",
                          "credentials", "authorization", "apikey", "bearer", "sas", "cookie"})
# run together in one word (SECRETKEY, DBPASSWORD, AZURE_STORAGE_CONNECTION_STRING)
SECRET_PARTS = ("password", "passwd", "secret", "credential", "apikey", "accesskey", "privatekey", "authtoken",
                "accesstoken", "connectionstring")
# ...token: a secret unless the word before names a vocabulary token (`pad_token`, `bos_token`, `chat_token`)
VOCABULARY_TOKEN_WORDS = frozenset({"pad", "bos", "eos", "unk", "sep", "cls", "mask", "start", "end", "stop",
                                    "image", "audio", "video", "boi", "eoi", "begin", "chat", "special", "decoder",
                                    "additional", "joiner", "answer", "label", "new", "max", "min", "num", "first",
                                    "last", "prompt", "turn", "system", "user", "assistant", "tool", "think"})
# ...key: a secret only after one of these (`api_key`, `account_key`; `label_key` and `sort_key` are not)
CREDENTIAL_KEY_WORDS = frozenset({"api", "access", "account", "secret", "private", "storage", "subscription",
                                  "encryption", "client", "master", "shared", "primary", "secondary", "signing",
                                  "service", "auth", "license", "ssh", "openai", "azure", "aws", "gcp", "wandb",
                                  "hf", "hub", "huggingface", "ai"})
_VALUE_SHAPES = (
    (re.compile(r"hf_[A-Za-z0-9]{20,}"), None),  # Hugging Face
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), None),  # OpenAI and alike
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), None),  # GitHub
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), None),  # an AWS access key id
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"), 1),  # an Authorization header
    # a URL's password, up to the last @ of the host part (a password may hold one); `:/` too, as a URL folded
    # into a path reads: keep the user
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*:/{1,2}[^/\s:@]*:)[^/\s]+(@)"), 1),
    # a URL's signature or token in its query: SAS, S3 and GCS signed URLs, ?token=, ?api_key=
    (re.compile(r"(?i)([?&;](?:sig|signature|x-amz-signature|x-amz-security-token|x-goog-signature|token|"
                r"access_token|api_key|apikey|key|code)=)[^&;\s]+"), 1),
    (re.compile(r"(?i)(\baccountkey=)[^;\s]+"), 1),  # an Azure storage connection string's key
    (re.compile(r"(?i)(\bauthorization:\s*basic\s+)[A-Za-z0-9+/=]+"), 1),  # a Basic Authorization header
)
SHOWN = "(set, not shown)"
# a config's token is refused where it is found: (the problem, how to fix it)
TOKEN_IN_CONFIG = ("an access token does not belong in a config file (configs are saved next to outputs and shared)",
                   "Remove it; set HF_TOKEN or run `hf auth login` instead.")


def _words(key: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", key)  # apiKey, HFToken -> HF Token
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    words = _words(key)
    if not words:
        return False
    if SECRET_WORDS.intersection(words) or any(part in "".join(words) for part in SECRET_PARTS):
        return True
    if words[-1] == "id" and len(words) > 2 and words[-2] == "key":  # AWS_ACCESS_KEY_ID
        words = words[:-1]
    before = words[-2] if len(words) > 1 else ""
    if words[-1] == "token":
        return before not in VOCABULARY_TOKEN_WORDS
    if words[-1] == "auth" or re.search(r"(^|_)PASS$", key):  # HF_AUTH; DB_PASS (an environment variable's name,
        return True  # in capitals: a pass named first_pass is a step of the workflow)
    return words[-1] == "key" and before in CREDENTIAL_KEY_WORDS


def looks_secret(value: Any) -> bool:
    """True when `value`, or text anywhere in it, has the shape of an access token, a password or a signature."""
    text = repr(value)
    return any(shape.search(text) for shape, _ in _VALUE_SHAPES)


def redact_text(text: str) -> str:
    """A message, log line or value with every secret-shaped part hidden."""
    for shape, keep in _VALUE_SHAPES:
        if keep is None:
            text = shape.sub(SHOWN, text)
        else:  # keep the groups around the secret: `Bearer `, `sftp://user:` ... `@`, `&sig=`
            text = shape.sub(lambda m: "".join((m.group(1), SHOWN, *m.groups()[1:])), text)
    return text


def redact(value: Any) -> Any:
    """`value` with each secret replaced by SHOWN (booleans under secret keys, which only switch a login on, kept)."""
    if isinstance(value, dict):
        return {k: SHOWN if is_secret_key(k) and not isinstance(v, bool) and v is not None else redact(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return redact_text(value) if isinstance(value, str) else value


class RedactingFormatter(logging.Formatter):
    """Log lines, tracebacks included, with every secret-shaped part hidden (a URL's password, a token)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
