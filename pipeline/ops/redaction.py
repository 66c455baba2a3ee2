"""The one redaction: what logs, error messages, the manifest and run summaries never show.

Two kinds of secret are masked with ``***``: credentials inside URLs (``user:password@``
and the signing parameters of presigned S3, GCS and Azure URLs), and the values of secret
environment variables (AWS keys, tokens, passwords, anything listed in ``PIPELINE_SECRETS``).
:class:`pipeline.ops.logs.Redactor` applies the same rules to every log event, and also masks
values under secret-looking keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

REDACTED = "***"
SECRET_KEY_PATTERN = re.compile(
    r"(secret|token|password|passwd|credential|api[_-]?key|access[_-]?key|private[_-]?key|authorization|cookie)",
    re.IGNORECASE,
)
#: Environment variables whose values are secrets whatever their length above MIN_SECRET_LENGTH.
SECRET_ENV_NAMES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "RAY_AUTH_TOKEN",
)
#: Comma-separated extra secret values (for secrets that reach the job some other way).
EXTRA_SECRETS_ENV = "PIPELINE_SECRETS"
MIN_SECRET_LENGTH = 6
#: Other variables whose names end like a secret (``HF_TOKEN``, ``DB_PASSWORD``, ``OPENAI_API_KEY``)
#: count when at least this long and not a file path (``AWS_WEB_IDENTITY_TOKEN_FILE`` and
#: ``GOOGLE_APPLICATION_CREDENTIALS`` name files, which are no secret and appear in configs).
SECRET_ENV_NAME_PATTERN = re.compile(
    r"(?:^|_)(token|secret|password|passwd|api_?key|access_key|private_key|credentials?)$", re.IGNORECASE
)
MIN_NAMED_SECRET_LENGTH = 8


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values in the environment that must never be printed, longest first."""
    values = [environ[name] for name in SECRET_ENV_NAMES if len(environ.get(name, "")) >= MIN_SECRET_LENGTH]
    values += [
        value
        for name, value in environ.items()
        if SECRET_ENV_NAME_PATTERN.search(name)
        and len(value) >= MIN_NAMED_SECRET_LENGTH
        and not value.startswith("/")
    ]
    values += [item.strip() for item in environ.get(EXTRA_SECRETS_ENV, "").split(",")]
    return sorted({value for value in values if len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_SIGNED_URL_PARAM = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
    r"|sig|signature|token|access_token|api_key|apikey|password)=)[^&\s\"'#]+"
)


def redact_url(text: str) -> str:
    """``text`` with every URL's ``user:password@`` and signing parameters masked.

    The one redaction of URLs: logs, error messages, the manifest, summaries and the
    ``uri`` column all go through it. Presigned S3/GCS/Azure URLs keep their path (a
    reader can still tell which object it was) but lose signatures, credentials and tokens.
    """
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    return _SIGNED_URL_PARAM.sub(lambda match: match.group(1) + "***", text)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """``text`` without URL credentials or secret values (those of the environment by default)."""
    for secret in secret_values(os.environ) if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return redact_url(text)
