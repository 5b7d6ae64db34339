"""Dashboard accounts, roles and sessions in DATA/dashboard.sqlite (the dashboard's own file:
the receiver's databases are only read, and alert actions go through the engine's queue).

    accounts(name PK, role, password_hash, devices, display_name, created_at, village)
        role: admin (every card), grid_worker (the cards the registry puts in their village,
        and any listed), family (the one elder's card listed); devices: JSON list of device ids
    login_failures(key, at)
        failed logins (LoginLimiter), kept across restarts of `carecard serve`
    sessions(token_hash PK, name, csrf, created_at, expires_at)
        the cookie holds the token; only its SHA-256 is stored, so a copy of the database does
        not log anybody in

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommendation).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "grid_worker", "family")
ACCOUNTS_DB_NAME = "dashboard.sqlite"
SESSION_LIFETIME_S = 12 * 3600
NAME_MAX = 64
PASSWORD_MIN = 8

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        devices TEXT NOT NULL,
        display_name TEXT NOT NULL,
        created_at REAL NOT NULL,
        village TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
)


_ACCOUNT_COLUMNS = "name, role, devices, display_name, created_at, village"


class AccountError(ValueError):
    """An account cannot be added, found or used; the message says which and why."""


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    devices: tuple[int, ...] = ()
    display_name: str = ""
    created_at: float = 0.0
    village: str | None = None  # a grid worker's: the registry's cards of this village

    def may_see(self, device: int, village: str | None) -> bool:
        """Whether this account sees `device`, which the registry puts in `village`."""
        return (self.role == "admin" or device in self.devices
                or (self.role == "grid_worker" and village is not None and village == self.village))


@dataclass(frozen=True)
class Session:
    account: Account
    csrf: str
    expires_at: float


def accounts_db_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / ACCOUNTS_DB_NAME


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    text = name.strip()
    if not text or len(text) > NAME_MAX or any(c.isspace() or ord(c) < 32 for c in text):
        raise AccountError(f"account name {name!r} must be 1-{NAME_MAX} characters without spaces")
    return text


def check_account(role: str, devices: list[int], village: str | None = None) -> None:
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if role == "family" and len(devices) != 1:
        raise AccountError("a family account follows exactly one elder's card: give one --card IMEI")
    if role == "grid_worker" and not devices and not village:
        raise AccountError("a grid worker account needs their village: give --village NAME "
                           "(the registry's village of the cards, `carecard devices add --village`)")
    if role == "admin" and devices:
        raise AccountError("an administrator sees every card: give no --card")
    if role != "grid_worker" and village is not None:
        raise AccountError(f"--village is for grid workers: {'a family account follows one card' if role == 'family' else 'an administrator sees every card'}")


class AccountStore:
    """Accounts and sessions. Thread-safe (one connection behind a lock): the web application
    calls it from its thread pool."""

    def __init__(self, path: Path | str, *, hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                         timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            if "village" not in {row[1] for row in self._conn.execute("PRAGMA table_info(accounts)")}:
                self._conn.execute("ALTER TABLE accounts ADD COLUMN village TEXT")
        except sqlite3.Error as exc:
            raise AccountError(f"cannot open the accounts database {self.path}: {exc}") from None
        self._dummy_hash: str | None = None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(self, name: str, role: str, password: str, devices: list[int] | None = None, *,
            display_name: str = "", village: str | None = None, now: float | None = None) -> Account:
        name = check_name(name)
        devices = sorted(set(devices or []))
        if village is not None:
            village = village.strip()
            if not village or any(ord(c) < 32 for c in village) or len(village) > NAME_MAX:
                raise AccountError(f"--village {village!r}: 1-{NAME_MAX} characters, no control characters")
        check_account(role, devices, village)
        if len(password) < PASSWORD_MIN:
            raise AccountError(f"the password must have at least {PASSWORD_MIN} characters")
        account = Account(name, role, tuple(devices), display_name or name,
                          time.time() if now is None else now, village)
        digest = self.hasher.hash(password)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO accounts (name, role, password_hash, devices, display_name, created_at, village) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, role, digest, json.dumps(devices), account.display_name, account.created_at, village))
            except sqlite3.IntegrityError:
                raise AccountError(f"account {name!r} exists already: remove it first") from None
        return account

    def remove(self, name: str) -> None:
        with self._lock:
            cursor = self._conn.execute("DELETE FROM accounts WHERE name = ?", (name,))
            self._conn.execute("DELETE FROM sessions WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise AccountError(f"no account named {name!r} (carecard users list)")

    def list(self) -> list[Account]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name").fetchall()
        return [self._account(row) for row in rows]

    def get(self, name: str) -> Account | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = ?",
                                     (name,)).fetchone()
        return None if row is None else self._account(row)

    @staticmethod
    def _account(row: tuple) -> Account:
        return Account(row[0], row[1], tuple(int(d) for d in json.loads(row[2])), row[3], row[4], row[5])

    def verify(self, name: str, password: str) -> Account | None:
        """The account when `password` is its password, else None."""
        with self._lock:
            row = self._conn.execute("SELECT password_hash FROM accounts WHERE name = ?", (name,)).fetchone()
        if row is None and self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_hex(8))
        # A check against no account still costs one hash: timing does not tell which names exist.
        digest = row[0] if row else self._dummy_hash
        try:
            self.hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self.hasher.check_needs_rehash(digest):
            with self._lock:
                self._conn.execute("UPDATE accounts SET password_hash = ? WHERE name = ?",
                                   (self.hasher.hash(password), name))
        return self.get(name)

    def open_session(self, account: Account, now: float) -> tuple[str, Session]:
        """(cookie token, session): a new session for `account`."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires = now + SESSION_LIFETIME_S
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            self._conn.execute("INSERT INTO sessions (token_hash, name, csrf, created_at, expires_at) "
                               "VALUES (?, ?, ?, ?, ?)", (_token_hash(token), account.name, csrf, now, expires))
        return token, Session(account, csrf, expires)

    def session(self, token: str, now: float) -> Session | None:
        with self._lock:
            row = self._conn.execute("SELECT name, csrf, expires_at FROM sessions WHERE token_hash = ?",
                                     (_token_hash(token),)).fetchone()
        if row is None or row[2] < now:
            return None
        account = self.get(row[0])
        return None if account is None else Session(account, row[1], row[2])

    def close_session(self, token: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),))


class LoginLimiter:
    """Failed logins within `window_s`: at most `per_name` for one account name (guessing one
    password) and `per_client` from one client address (trying many names). Kept in the table
    login_failures of `path` (the accounts database), so a restart of `carecard serve` does not
    give a guesser a fresh count; in memory when `path` is None."""

    def __init__(self, path: Path | str | None = None, *, per_name: int = 5, per_client: int = 30,
                 window_s: float = 300.0):
        self.per_name = per_name
        self.per_client = per_client
        self.window_s = window_s
        self._lock = threading.Lock()
        where = ":memory:" if path is None else str(path)
        try:
            self._conn = sqlite3.connect(where, check_same_thread=False, isolation_level=None, timeout=10.0)
            if path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS login_failures (key TEXT NOT NULL, at REAL NOT NULL)")
            self._conn.execute("CREATE INDEX IF NOT EXISTS login_failures_by_key ON login_failures (key, at)")
        except sqlite3.Error as exc:
            raise AccountError(f"cannot open the login failures in {where}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _keys(self, name: str, client: str) -> list[tuple[str, int]]:
        return [(f"name:{name}", self.per_name), (f"client:{client}", self.per_client)]

    def retry_after(self, name: str, client: str, now: float) -> float:
        """Seconds until this name may be tried again from this client (0: now)."""
        with self._lock:
            wait = 0.0
            for key, limit in self._keys(name, client):
                # the limit-th newest failure within the window: the one that has to age out
                row = self._conn.execute(
                    "SELECT at FROM login_failures WHERE key = ? AND at > ? ORDER BY at DESC LIMIT 1 OFFSET ?",
                    (key, now - self.window_s, limit - 1)).fetchone()
                if row is not None:
                    wait = max(wait, self.window_s - (now - row[0]))
            return wait

    def failed(self, name: str, client: str, now: float) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM login_failures WHERE at <= ?", (now - self.window_s,))
                self._conn.executemany("INSERT INTO login_failures (key, at) VALUES (?, ?)",
                                       [(key, now) for key, _limit in self._keys(name, client)])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def succeeded(self, name: str) -> None:
        """A right password clears the name's count (not the client's: one valid account must
        not reset the count of guesses at others)."""
        with self._lock:
            self._conn.execute("DELETE FROM login_failures WHERE key = ?", (f"name:{name}",))
