"""Users, API tokens and console sessions, kept in the index database."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from dicomvault.index.schema import api_tokens, sessions, users
from dicomvault.users import (
    EXTERNAL_PASSWORD_HASH,
    SHOWN_TOKEN_CHARACTERS,
    Role,
    User,
    check_password,
    check_user_name,
    digest,
    hash_password,
    needs_rehash,
    new_secret,
    new_token,
    verify_password,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_SESSION_LIFETIME = datetime.timedelta(hours=12)
# After this many failed logins in a row, a user's logins are rejected for LOCKOUT_TIME.
MAX_FAILED_LOGINS = 5
LOCKOUT_TIME = datetime.timedelta(minutes=5)


class UserExistsError(ValueError):
    """A user of this name exists."""


class UserNotFoundError(KeyError):
    """No user of this name exists."""


class LocalUserConflictError(ValueError):
    """A user with a password has the name that an external login asked for."""


class TokenNotFoundError(KeyError):
    """No token of this id belongs to the user."""


class LoginLockedError(PermissionError):
    """Logins of this user are locked after repeated failures, until ``until``."""

    def __init__(self, name: str, until: datetime.datetime) -> None:
        super().__init__(name)
        self.until = until


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """An API token as listed: never the token itself."""

    id: int
    name: str
    prefix: str
    created_at: datetime.datetime
    last_used_at: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class Session:
    """A console session: its user and the CSRF token its forms must carry."""

    user: User
    csrf_token: str
    expires_at: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _aware(value: datetime.datetime) -> datetime.datetime:
    # SQLite returns naive datetimes; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


def _user(row: Any) -> User:
    return User(int(row.pk), str(row.name), Role(row.role))


class UserStore:
    """Adds, lists and removes users; checks passwords, API tokens and sessions."""

    def __init__(
        self, engine: Engine, session_lifetime: datetime.timedelta = DEFAULT_SESSION_LIFETIME
    ) -> None:
        self.engine = engine
        self.session_lifetime = session_lifetime

    def _writing(self) -> Any:
        return self.engine.connect().execution_options(write=True)

    # --- users ---------------------------------------------------------------------------

    def add(self, name: str, role: Role, password: str) -> User:
        """Create a user.

        Raises
        ------
        InvalidUserError
            If the name or password cannot be used.
        UserExistsError
            If a user of this name exists.
        """
        check_user_name(name)
        row = {
            "name": name,
            "role": role.value,
            "password_hash": hash_password(check_password(password)),
            "failed_logins": 0,
            "created_at": _now(),
            "updated_at": _now(),
        }
        with self._writing() as connection, connection.begin():
            try:
                pk = connection.execute(users.insert().values(**row)).inserted_primary_key[0]
            except IntegrityError:
                raise UserExistsError(name) from None
        LOGGER.info("User %s added with role %s", name, role.value)
        return User(int(pk), name, role)

    def sync_external(self, name: str, role: Role) -> User:
        """Create or update the user of an OpenID Connect login, with the role of this login.

        The user gets no password (see ``EXTERNAL_PASSWORD_HASH``), so only
        the identity provider can log them in. Sessions, API tokens and the
        audit trail treat them like local users.

        Raises
        ------
        InvalidUserError
            If ``name`` is not a valid user name.
        LocalUserConflictError
            If a local user with a password has this name; an identity
            provider must not take over a local account.
        """
        check_user_name(name)
        now = _now()
        with self._writing() as connection, connection.begin():
            row = connection.execute(select(users).where(users.c.name == name)).first()
            if row is None:
                values = {
                    "name": name,
                    "role": role.value,
                    "password_hash": EXTERNAL_PASSWORD_HASH,
                    "failed_logins": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                pk = connection.execute(users.insert().values(**values)).inserted_primary_key[0]
                LOGGER.info("External user %s added with role %s", name, role.value)
                return User(int(pk), name, role)
            if row.password_hash != EXTERNAL_PASSWORD_HASH:
                raise LocalUserConflictError(name)
            if row.role != role.value:
                connection.execute(
                    update(users)
                    .where(users.c.pk == row.pk)
                    .values(role=role.value, updated_at=now)
                )
                LOGGER.info(
                    "External user %s changed from role %s to %s", name, row.role, role.value
                )
        return User(int(row.pk), name, role)

    def is_external(self, name: str) -> bool:
        """Return whether the user ``name`` logs in through OpenID Connect only."""
        with self.engine.connect() as connection:
            password_hash = connection.execute(
                select(users.c.password_hash).where(users.c.name == name)
            ).scalar_one_or_none()
        return password_hash == EXTERNAL_PASSWORD_HASH

    def get(self, name: str) -> User | None:
        """Return the user of this name, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.name == name)).first()
        return _user(row) if row is not None else None

    def list_users(self) -> list[User]:
        """Return every user, by name."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(users).order_by(users.c.name)).all()
        return [_user(row) for row in rows]

    def count_admins(self) -> int:
        """Return the number of users with the admin role."""
        with self.engine.connect() as connection:
            statement = select(func.count()).where(users.c.role == Role.ADMIN.value)
            return int(connection.execute(statement).scalar_one())

    def set_password(self, name: str, password: str) -> None:
        """Replace a user's password, end their sessions and clear a lockout.

        Raises
        ------
        InvalidUserError
            If the password cannot be used.
        UserNotFoundError
            If no user of this name exists.
        """
        password_hash = hash_password(check_password(password))
        with self._writing() as connection, connection.begin():
            pk = connection.execute(select(users.c.pk).where(users.c.name == name)).scalar()
            if pk is None:
                raise UserNotFoundError(name)
            connection.execute(
                update(users)
                .where(users.c.pk == pk)
                .values(
                    password_hash=password_hash,
                    failed_logins=0,
                    locked_until=None,
                    updated_at=_now(),
                )
            )
            connection.execute(delete(sessions).where(sessions.c.user_pk == pk))
        LOGGER.info("Password of user %s changed; their sessions ended", name)

    def remove(self, name: str) -> None:
        """Remove a user with their tokens and sessions.

        Raises
        ------
        UserNotFoundError
            If no user of this name exists.
        """
        with self._writing() as connection, connection.begin():
            pk = connection.execute(select(users.c.pk).where(users.c.name == name)).scalar()
            if pk is None:
                raise UserNotFoundError(name)
            # Deleted explicitly: SQLite enforces ON DELETE CASCADE only with a pragma.
            connection.execute(delete(sessions).where(sessions.c.user_pk == pk))
            connection.execute(delete(api_tokens).where(api_tokens.c.user_pk == pk))
            connection.execute(delete(users).where(users.c.pk == pk))
        LOGGER.info("User %s removed", name)

    # --- logins --------------------------------------------------------------------------

    def authenticate(self, name: str, password: str) -> User | None:
        """Return the user if the password matches, or None.

        Each failure counts; after MAX_FAILED_LOGINS in a row the user is
        locked for LOCKOUT_TIME. A success resets the count.

        Raises
        ------
        LoginLockedError
            If the user's logins are locked, whatever the password.
        """
        with self.engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            verify_password(None, password)  # as slow as for a known user
            return None
        if row.locked_until is not None and _aware(row.locked_until) > _now():
            raise LoginLockedError(name, _aware(row.locked_until))
        if not verify_password(row.password_hash, password):
            self._count_failure(int(row.pk), name)
            return None
        values: dict[str, Any] = {"failed_logins": 0, "locked_until": None}
        if needs_rehash(row.password_hash):
            values["password_hash"] = hash_password(password)
        with self._writing() as connection, connection.begin():
            connection.execute(update(users).where(users.c.pk == row.pk).values(**values))
        return _user(row)

    def _count_failure(self, pk: int, name: str) -> None:
        with self._writing() as connection, connection.begin():
            failures = connection.execute(
                update(users)
                .where(users.c.pk == pk)
                .values(failed_logins=users.c.failed_logins + 1)
                .returning(users.c.failed_logins)
            ).scalar_one()
            if failures >= MAX_FAILED_LOGINS:
                until = _now() + LOCKOUT_TIME
                connection.execute(
                    update(users)
                    .where(users.c.pk == pk)
                    .values(failed_logins=0, locked_until=until)
                )
                LOGGER.warning(
                    "User %s locked until %s after %d failed logins",
                    name,
                    until.isoformat(timespec="seconds"),
                    failures,
                )

    # --- API tokens ----------------------------------------------------------------------

    def create_token(self, user: User, name: str) -> tuple[TokenInfo, str]:
        """Create an API token for ``user``; return its description and the token itself.

        The token is returned only here: the index keeps its digest.
        """
        token = new_token()
        created = _now()
        prefix = token[:SHOWN_TOKEN_CHARACTERS]
        with self._writing() as connection, connection.begin():
            pk = connection.execute(
                api_tokens.insert().values(
                    user_pk=user.pk,
                    name=name,
                    token_digest=digest(token),
                    prefix=prefix,
                    created_at=created,
                )
            ).inserted_primary_key[0]
        LOGGER.info("API token %s (%s) created for user %s", prefix, name, user.name)
        return TokenInfo(int(pk), name, prefix, created, None), token

    def list_tokens(self, user: User) -> list[TokenInfo]:
        """Return the user's API tokens, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(api_tokens).where(api_tokens.c.user_pk == user.pk).order_by(api_tokens.c.pk)
            ).all()
        return [
            TokenInfo(
                int(row.pk),
                str(row.name),
                str(row.prefix),
                _aware(row.created_at),
                _aware(row.last_used_at) if row.last_used_at is not None else None,
            )
            for row in rows
        ]

    def revoke_token(self, user: User, token_id: int) -> None:
        """Delete one of the user's API tokens.

        Raises
        ------
        TokenNotFoundError
            If the user has no token with this id.
        """
        with self._writing() as connection, connection.begin():
            deleted = connection.execute(
                delete(api_tokens).where(
                    api_tokens.c.pk == token_id, api_tokens.c.user_pk == user.pk
                )
            ).rowcount
        if not deleted:
            raise TokenNotFoundError(token_id)
        LOGGER.info("API token %d of user %s revoked", token_id, user.name)

    def user_of_token(self, token: str) -> User | None:
        """Return the user an API token belongs to, or None for an unknown token."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(users, api_tokens.c.pk.label("token_pk"), api_tokens.c.last_used_at)
                .join(api_tokens, api_tokens.c.user_pk == users.c.pk)
                .where(api_tokens.c.token_digest == digest(token))
            ).first()
        if row is None:
            return None
        now = _now()
        last_used = _aware(row.last_used_at) if row.last_used_at is not None else None
        if last_used is None or now - last_used > datetime.timedelta(minutes=1):
            # Recorded at most once a minute, so that scripts do not write on every request.
            with self._writing() as connection, connection.begin():
                connection.execute(
                    update(api_tokens)
                    .where(api_tokens.c.pk == row.token_pk)
                    .values(last_used_at=now)
                )
        return _user(row)

    # --- sessions ------------------------------------------------------------------------

    def create_session(self, user: User) -> tuple[str, Session]:
        """Start a console session; return its identifier (for the cookie) and the session."""
        session_id = new_secret()
        created = _now()
        session = Session(user, new_secret(), created + self.session_lifetime)
        with self._writing() as connection, connection.begin():
            connection.execute(delete(sessions).where(sessions.c.expires_at < created))
            connection.execute(
                sessions.insert().values(
                    session_digest=digest(session_id),
                    user_pk=user.pk,
                    csrf_token=session.csrf_token,
                    created_at=created,
                    expires_at=session.expires_at,
                )
            )
        return session_id, session

    def get_session(self, session_id: str) -> Session | None:
        """Return the live session of this identifier, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(users, sessions.c.csrf_token, sessions.c.expires_at)
                .join(sessions, sessions.c.user_pk == users.c.pk)
                .where(sessions.c.session_digest == digest(session_id))
            ).first()
        if row is None or _aware(row.expires_at) <= _now():
            return None
        return Session(_user(row), str(row.csrf_token), _aware(row.expires_at))

    def end_session(self, session_id: str) -> None:
        """End a session; an unknown identifier is ignored."""
        with self._writing() as connection, connection.begin():
            connection.execute(
                delete(sessions).where(sessions.c.session_digest == digest(session_id))
            )
