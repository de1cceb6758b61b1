"""Users, roles, password hashing and the secrets of API tokens and sessions.

Passwords are hashed with argon2id (argon2-cffi's defaults). API tokens and
session identifiers are random strings shown to their owner once. The index
keeps only their SHA-256 digests, so a copy of the database grants no access.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
TOKEN_PREFIX = "dvt_"
# The first characters of a token, kept to tell a user's tokens apart.
SHOWN_TOKEN_CHARACTERS = len(TOKEN_PREFIX) + 6
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASHER = PasswordHasher()
# Stored in place of a password hash for users who log in through OpenID Connect.
# It is no argon2 hash, so no password ever matches it.
EXTERNAL_PASSWORD_HASH = "!external:oidc"


@functools.cache
def _dummy_hash() -> str:
    """Return a hash to check unknown user names against, so they take as long as known ones.

    Made on first use, because hashing takes about 0.1 s of CPU and every
    command would pay it at import.
    """
    return _HASHER.hash(secrets.token_urlsafe(16))


class Role(enum.StrEnum):
    """The permissions of a user: ``admin`` everything, ``user`` search, view and download."""

    ADMIN = "admin"
    USER = "user"


class InvalidUserError(ValueError):
    """An invalid user name, role or password; the message gives the reason."""


@dataclasses.dataclass(frozen=True)
class User:
    """A user of the console and the HTTP API."""

    pk: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        """Whether the user has the admin role."""
        return self.role is Role.ADMIN


def check_user_name(name: str) -> str:
    """Return ``name`` if it is a valid user name.

    Raises
    ------
    InvalidUserError
        Unless the name has 1 to 64 letters, digits, '.', '_', '@' or '-'
        and starts with a letter or digit.
    """
    if not _NAME_RE.match(name):
        raise InvalidUserError(
            f"invalid user name {name!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_role(text: str) -> Role:
    """Return the role named ``text``.

    Raises
    ------
    InvalidUserError
        If ``text`` is not ``admin`` or ``user``.
    """
    try:
        return Role(text)
    except ValueError:
        raise InvalidUserError(f"invalid role {text!r}: use 'admin' or 'user'") from None


def check_password(password: str) -> str:
    """Return ``password`` if it is long enough to be accepted.

    Raises
    ------
    InvalidUserError
        If it has fewer than MIN_PASSWORD_LENGTH or more than
        MAX_PASSWORD_LENGTH characters.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidUserError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidUserError(f"the password may have at most {MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    """Return the argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Return whether ``password`` matches ``password_hash``.

    With no hash (an unknown user), a dummy hash is checked so that the
    check takes as long as for a known user.
    """
    if password_hash == EXTERNAL_PASSWORD_HASH:
        password_hash = None  # as slow as for a local user, and never a match
    try:
        return _HASHER.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Return whether the hash was made with weaker parameters than the current ones."""
    return _HASHER.check_needs_rehash(password_hash)


def new_token() -> str:
    """Return a new random API token (256 bits), with a prefix that names its kind."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    """Return a new random secret for a session identifier or a CSRF token."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """Return the hex SHA-256 digest under which a token or session is stored."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
