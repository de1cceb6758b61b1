"""Users, passwords, lockout, API tokens and sessions in the index (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime

import pytest
from sqlalchemy import Engine, select, update

from dicomvault.index.schema import api_tokens, sessions, users
from dicomvault.index.users import (
    MAX_FAILED_LOGINS,
    LoginLockedError,
    TokenNotFoundError,
    UserExistsError,
    UserNotFoundError,
    UserStore,
)
from dicomvault.users import (
    InvalidUserError,
    Role,
    check_user_name,
    digest,
    hash_password,
    parse_role,
    verify_password,
)

PASSWORD = "correct horse battery"


@pytest.fixture
def store(migrated_engine: Engine) -> UserStore:
    return UserStore(migrated_engine)


class TestPasswords:
    def test_hash_verifies(self) -> None:
        password_hash = hash_password(PASSWORD)

        assert password_hash.startswith("$argon2id$")
        assert verify_password(password_hash, PASSWORD)
        assert not verify_password(password_hash, PASSWORD + "x")

    def test_unknown_user_never_verifies(self) -> None:
        assert not verify_password(None, PASSWORD)

    def test_malformed_hash(self) -> None:
        assert not verify_password("not a hash", PASSWORD)

    @pytest.mark.parametrize("name", ["", "-admin", "a b", "x" * 65, "ümlaut"])
    def test_invalid_names(self, name: str) -> None:
        with pytest.raises(InvalidUserError, match="invalid user name"):
            check_user_name(name)

    def test_invalid_role(self) -> None:
        with pytest.raises(InvalidUserError, match="use 'admin' or 'user'"):
            parse_role("root")


class TestUsers:
    def test_add_and_list(self, store: UserStore) -> None:
        store.add("alice", Role.ADMIN, PASSWORD)
        store.add("bob", Role.USER, PASSWORD)

        assert [(u.name, u.role) for u in store.list_users()] == [
            ("alice", Role.ADMIN),
            ("bob", Role.USER),
        ]
        assert store.count_admins() == 1

    def test_password_stored_as_hash(self, store: UserStore, migrated_engine: Engine) -> None:
        store.add("alice", Role.ADMIN, PASSWORD)

        with migrated_engine.connect() as connection:
            stored = connection.execute(select(users.c.password_hash)).scalar_one()
        assert PASSWORD not in stored
        assert stored.startswith("$argon2id$")

    def test_duplicate_name(self, store: UserStore) -> None:
        store.add("alice", Role.ADMIN, PASSWORD)

        with pytest.raises(UserExistsError):
            store.add("alice", Role.USER, PASSWORD)

    def test_short_password(self, store: UserStore) -> None:
        with pytest.raises(InvalidUserError, match="at least 10 characters"):
            store.add("alice", Role.ADMIN, "short")

    def test_remove_takes_tokens_and_sessions(
        self, store: UserStore, migrated_engine: Engine
    ) -> None:
        alice = store.add("alice", Role.ADMIN, PASSWORD)
        store.create_token(alice, "script")
        store.create_session(alice)

        store.remove("alice")

        assert store.get("alice") is None
        with migrated_engine.connect() as connection:
            assert connection.execute(select(api_tokens)).all() == []
            assert connection.execute(select(sessions)).all() == []

    def test_remove_unknown(self, store: UserStore) -> None:
        with pytest.raises(UserNotFoundError):
            store.remove("nobody")

    def test_set_password_ends_sessions(self, store: UserStore) -> None:
        alice = store.add("alice", Role.ADMIN, PASSWORD)
        session_id, _ = store.create_session(alice)

        store.set_password("alice", "another long password")

        assert store.get_session(session_id) is None
        assert store.authenticate("alice", PASSWORD) is None
        assert store.authenticate("alice", "another long password") == alice


class TestAuthenticate:
    def test_right_and_wrong_password(self, store: UserStore) -> None:
        alice = store.add("alice", Role.USER, PASSWORD)

        assert store.authenticate("alice", PASSWORD) == alice
        assert store.authenticate("alice", "wrong password!") is None
        assert store.authenticate("nobody", PASSWORD) is None

    def test_lockout_after_repeated_failures(self, store: UserStore) -> None:
        store.add("alice", Role.USER, PASSWORD)
        for _ in range(MAX_FAILED_LOGINS):
            assert store.authenticate("alice", "wrong password!") is None

        with pytest.raises(LoginLockedError) as locked:
            store.authenticate("alice", PASSWORD)

        assert locked.value.until > datetime.datetime.now(datetime.UTC)

    def test_lockout_ends(self, store: UserStore, migrated_engine: Engine) -> None:
        alice = store.add("alice", Role.USER, PASSWORD)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        with migrated_engine.begin() as connection:
            connection.execute(update(users).values(locked_until=past))

        assert store.authenticate("alice", PASSWORD) == alice

    def test_success_resets_the_count(self, store: UserStore) -> None:
        store.add("alice", Role.USER, PASSWORD)
        for _ in range(MAX_FAILED_LOGINS - 1):
            store.authenticate("alice", "wrong password!")
        store.authenticate("alice", PASSWORD)

        assert store.authenticate("alice", "wrong password!") is None
        assert store.authenticate("alice", PASSWORD) is not None


class TestTokens:
    def test_token_identifies_its_user(self, store: UserStore, migrated_engine: Engine) -> None:
        alice = store.add("alice", Role.USER, PASSWORD)

        info, token = store.create_token(alice, "nightly export")

        assert store.user_of_token(token) == alice
        assert store.user_of_token(token + "x") is None
        assert token.startswith(info.prefix)
        with migrated_engine.connect() as connection:
            assert connection.execute(select(api_tokens.c.token_digest)).scalar_one() == digest(
                token
            )

    def test_list_and_revoke(self, store: UserStore) -> None:
        alice = store.add("alice", Role.USER, PASSWORD)
        info, token = store.create_token(alice, "first")
        store.user_of_token(token)

        [listed] = store.list_tokens(alice)
        store.revoke_token(alice, info.id)

        assert (listed.name, listed.prefix) == ("first", info.prefix)
        assert listed.last_used_at is not None
        assert store.user_of_token(token) is None
        assert store.list_tokens(alice) == []

    def test_revoke_of_another_user(self, store: UserStore) -> None:
        alice = store.add("alice", Role.USER, PASSWORD)
        bob = store.add("bob", Role.USER, PASSWORD)
        info, _ = store.create_token(alice, "first")

        with pytest.raises(TokenNotFoundError):
            store.revoke_token(bob, info.id)


class TestSessions:
    def test_session_round_trip(self, store: UserStore) -> None:
        alice = store.add("alice", Role.ADMIN, PASSWORD)

        session_id, session = store.create_session(alice)
        found = store.get_session(session_id)

        assert found is not None
        assert found.user == alice
        assert found.csrf_token == session.csrf_token
        assert store.get_session("unknown") is None

    def test_end_session(self, store: UserStore) -> None:
        session_id, _ = store.create_session(store.add("alice", Role.ADMIN, PASSWORD))

        store.end_session(session_id)

        assert store.get_session(session_id) is None

    def test_expired_session(self, migrated_engine: Engine) -> None:
        store = UserStore(migrated_engine, session_lifetime=datetime.timedelta(seconds=-1))
        session_id, _ = store.create_session(store.add("alice", Role.ADMIN, PASSWORD))

        assert store.get_session(session_id) is None
