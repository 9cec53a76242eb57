"""The admin password of the results page: where it comes from and a constant-time check."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

PASSWORD_ENV = "ECHOSYNTH_SURVEY_PASSWORD"
PASSWORD_FILE_ENV = "ECHOSYNTH_SURVEY_PASSWORD_FILE"


def admin_password(password_file: str = "", env: str = PASSWORD_ENV) -> str | None:
    """The password from $ECHOSYNTH_SURVEY_PASSWORD, else a file's first line; None if unset."""
    value = os.environ.get(env, "")
    if value:
        return value
    password_file = password_file or os.environ.get(PASSWORD_FILE_ENV, "")
    if password_file:
        path = Path(password_file)
        if not path.is_file():
            raise FileNotFoundError(f"admin password file {path} not found; create it or set ${env}")
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            raise ValueError(f"admin password file {path} is empty")
        return value
    return None


def check_password(given: str, expected: str) -> bool:
    """Compare in constant time (digests first, so neither length nor prefix leaks)."""
    a = hashlib.sha256(str(given).encode("utf-8")).digest()
    b = hashlib.sha256(str(expected).encode("utf-8")).digest()
    return hmac.compare_digest(a, b) and bool(expected)
