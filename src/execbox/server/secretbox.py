"""The server key that encrypts provider secrets at rest (Fernet: AES-128-CBC with an HMAC-SHA256 tag).

The key is ``EXECBOX_SECRET_KEY`` when set (any string of 32 or more characters, e.g. ``openssl rand -base64
32``), else ``data_dir/secret.key``, generated on first use (0600). Losing it loses the stored secrets (the
settings stay: set the secrets again); a store copied without its key holds no secret in clear.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from execbox.errors import ExecboxError

MIN_KEY_CHARS = 32
KEY_FILE = "secret.key"


class SecretKeyError(ExecboxError):
    """The server key is unusable, or does not open what the store holds."""


def server_key(data_dir: Path, configured: SecretStr | None) -> str:
    """The key's text: the configured one, or data_dir/secret.key (created once, owner only)."""
    if configured is not None:
        text = configured.get_secret_value().strip()
        if len(text) < MIN_KEY_CHARS:
            raise SecretKeyError(f"EXECBOX_SECRET_KEY has {len(text)} characters; give {MIN_KEY_CHARS} or more "
                                 "(e.g. the output of `openssl rand -base64 32`)")
        return text
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):  # O_EXCL: two processes starting at once make one key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    text = path.read_text().strip()
    if len(text) < MIN_KEY_CHARS:
        raise SecretKeyError(f"{path} holds no usable key (fewer than {MIN_KEY_CHARS} characters)")
    return text


class SecretBox:
    """Encrypts and decrypts secret values with the server key."""

    def __init__(self, key_text: str) -> None:
        # any long string becomes a Fernet key (32 bytes, url-safe base64): one rule for both sources
        digest = hashlib.sha256(key_text.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    @classmethod
    def for_data_dir(cls, data_dir: Path, configured: SecretStr | None) -> SecretBox:
        return cls(server_key(data_dir, configured))

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, ValueError) as e:
            raise SecretKeyError("a stored secret does not open with this server key (EXECBOX_SECRET_KEY or "
                                 "data_dir/secret.key changed?): set the old key again, or set the "
                                 "provider's secrets anew") from e
