"""API keys and roles: who is calling, and may they call this route.

A key is ``fg_`` + 43 URL-safe characters (``secrets.token_urlsafe(32)``: 256 random bits).
It is shown once, by ``create``; Redis keeps only its SHA-256. A fast, unsalted hash is the
right tool here, unlike for passwords: a key has 256 bits of entropy, so no dictionary or
brute-force search over the digest can find it however cheap one guess is, and slow KDFs
(bcrypt, scrypt, argon2) exist to stretch *low*-entropy secrets, at ~50-100 ms of CPU per
request. A deterministic digest is also what lets ``verify`` find the key in one lookup.

Roles: ``submit`` (post, moderate), ``read`` (decisions, stats), ``review`` (review
queues), ``admin`` (policy reload/shadow/versions, keys). A key may hold several. **admin
implies the other three**: an operator key works on every route, and there is no role
above it that could be escalated to; give people the narrow roles they need.

Redis (see ``queue.Keys``; ``fg`` is the deployment's prefix):

* ``fg:apikey:<sha256>``   hash id, name, roles, created_at: exists while the key is active;
                           ``verify`` is one HGETALL of it
* ``fg:apikeys``           hash id -> JSON record of every key ever created (revoked ones
                           keep their record, with ``revoked_at``: audit entries name them)
* ``fg:apikeys:names``     hash name -> id of the active keys (names are unique among them)
* ``fg:apikeys:used``      hash id -> last use (ms), written at most once a minute per key
                           and process

The store is written once as plain generators that yield Redis calls; ``KeyStore`` runs
them on a sync client (CLI), ``AsyncKeyStore`` on ``redis.asyncio`` (API), so the two can
not drift apart.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import secrets
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from service.queue import Keys

ROLES: tuple[str, ...] = ("submit", "read", "review", "admin")
Role = Literal["submit", "read", "review", "admin"]
TOKEN_PREFIX = "fg_"
_TOKEN_RE = re.compile(r"^fg_[A-Za-z0-9_-]{43}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOUCH_INTERVAL_S = 60.0


class KeyStoreError(ValueError):
    """Base of the errors a caller can show to a person (bad name, role, duplicate)."""


class UnknownRole(KeyStoreError):
    pass


class InvalidName(KeyStoreError):
    pass


class NameTaken(KeyStoreError):
    pass


# -- pure parts --------------------------------------------------------------------------


def parse_roles(values: Iterable[str]) -> frozenset[str]:
    """``["review", "read,submit"]`` -> roles; unknown or no roles raise UnknownRole."""
    roles = {r.strip().lower() for v in values for r in v.split(",") if r.strip()}
    unknown = sorted(roles - set(ROLES))
    if unknown:
        raise UnknownRole(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    if not roles:
        raise UnknownRole(f"a key needs at least one role: {', '.join(ROLES)}")
    return frozenset(roles)


def ordered(roles: Iterable[str]) -> tuple[str, ...]:
    """Roles in their canonical order (for display and storage)."""
    have = set(roles)
    return tuple(r for r in ROLES if r in have)


def effective_roles(roles: Iterable[str]) -> frozenset[str]:
    """What a key may do: its roles, or all of them for admin."""
    roles = frozenset(roles)
    return frozenset(ROLES) if "admin" in roles else roles


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    """Shape check before any Redis call, so garbage costs nothing."""
    return bool(_TOKEN_RE.match(token))


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass(frozen=True)
class Principal:
    """The caller behind a verified key: what audit entries and logs name."""

    name: str
    roles: frozenset[str]
    key_id: str

    def has(self, role: str) -> bool:
        return role in effective_roles(self.roles)

    def audit(self) -> dict[str, str]:
        """The identity an audit entry carries (key names are unique while active; the id
        tells apart two keys that had the same name at different times)."""
        return {"actor": self.name, "actor_key_id": self.key_id}


# Used by the API when it runs open (loopback, no keys configured). Its name cannot be a key
# name (NAME_RE), so the audit stream tells open-mode actions apart from any key's.
OPEN_PRINCIPAL = Principal(name="(open)", roles=frozenset(ROLES), key_id="")


class Access(enum.Enum):
    ALLOW = "allow"
    UNAUTHENTICATED = "unauthenticated"  # 401: no key, or not a valid one
    FORBIDDEN = "forbidden"  # 403: a valid key without the role


def authorize(principal: Principal | None, required: str | None) -> Access:
    """A route's required role (None: open route) against the caller (None: no valid key)."""
    if required is None:
        return Access.ALLOW
    if required not in ROLES:
        raise ValueError(f"route requires unknown role {required!r}")
    if principal is None:
        return Access.UNAUTHENTICATED
    return Access.ALLOW if principal.has(required) else Access.FORBIDDEN


def denial(
    access: Access, required: str | None = None, *, key_given: bool = False
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) of a refused request, in the API's one error shape."""
    if access is Access.UNAUTHENTICATED:
        message = ("the API key is not valid (unknown or revoked)" if key_given
                   else "an API key is required: Authorization: Bearer fg_...")  # fmt: skip
        kind = "invalid_key" if key_given else "missing_key"
        body = {"error": "unauthorized",
                "detail": [{"field": "authorization", "message": message, "type": kind}]}  # fmt: skip
        return 401, body, {"WWW-Authenticate": 'Bearer realm="floodgate"'}
    if access is Access.FORBIDDEN:
        message = f"this API key does not have the {required!r} role"
        body = {"error": "forbidden",
                "detail": [{"field": "authorization", "message": message, "type": "missing_role"}]}  # fmt: skip
        return 403, body, {}
    raise ValueError("ALLOW is not a denial")


# -- records -----------------------------------------------------------------------------


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class KeyInfo:
    """What ``list`` shows about a key: never its token nor its digest."""

    id: str
    name: str
    roles: tuple[str, ...]
    created_at_ms: int
    hint: str  # "fg_" + the token's first 4 random characters, to tell keys apart
    last_used_at_ms: int | None = None
    revoked_at_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at_ms is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "roles": list(self.roles),
                "hint": self.hint, "created_at": _iso(self.created_at_ms),
                "last_used_at": _iso(self.last_used_at_ms),
                "revoked_at": _iso(self.revoked_at_ms), "active": self.active}  # fmt: skip


@dataclass(frozen=True)
class CreatedKey:
    token: str  # the only time the key exists outside its holder's hands
    info: KeyInfo


def _record(info: KeyInfo, key_digest: str) -> str:
    # the digest is kept so that revoke can find the active hash; list never returns it
    return json.dumps({"id": info.id, "name": info.name, "roles": list(info.roles),
                       "created_at": info.created_at_ms, "hint": info.hint,
                       "revoked_at": info.revoked_at_ms, "digest": key_digest})  # fmt: skip


def _info(raw: str, last_used: str | None = None) -> tuple[KeyInfo, str]:
    r = json.loads(raw)
    info = KeyInfo(id=r["id"], name=r["name"], roles=tuple(r["roles"]),
                   created_at_ms=int(r["created_at"]), hint=r["hint"],
                   last_used_at_ms=int(last_used) if last_used else None,
                   revoked_at_ms=r.get("revoked_at"))  # fmt: skip
    return info, r["digest"]


# -- Redis operations, written once --------------------------------------------------------

CREATE_LUA = """
-- KEYS: records, names, active hash; ARGV: id, name, record, roles, created_at
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], 'id', ARGV[1], 'name', ARGV[2], 'roles', ARGV[4],
           'created_at', ARGV[5])
return 1
"""

REVOKE_LUA = """
-- KEYS: records, names, active hash; ARGV: id, name, record with revoked_at
if redis.call('DEL', KEYS[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class _Call:
    method: str
    args: tuple = ()


Op = Generator[_Call, Any, Any]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _create(keys: Keys, name: str, roles: Iterable[str]) -> Op:
    if not NAME_RE.match(name):
        raise InvalidName(f"invalid key name {name!r}: 1-64 of A-Z a-z 0-9 _ . @ -, "
                          "starting with a letter or digit")  # fmt: skip
    role_set = ordered(parse_roles(roles))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key_digest = digest(token)
    info = KeyInfo(id="k" + secrets.token_hex(6), name=name, roles=role_set,
                   created_at_ms=_now_ms(), hint=token[:7])  # fmt: skip
    ok = yield _Call("eval", (CREATE_LUA, 3, keys.api_keys, keys.api_key_names,
                              keys.api_key(key_digest), info.id, name, _record(info, key_digest),
                              ",".join(role_set), info.created_at_ms))  # fmt: skip
    if not int(ok):
        raise NameTaken(f"an active key is already named {name!r} (revoke it first, or "
                        "choose another name)")  # fmt: skip
    return CreatedKey(token, info)


def _list(keys: Keys, include_revoked: bool) -> Op:
    records = yield _Call("hgetall", (keys.api_keys,))
    used = yield _Call("hgetall", (keys.api_key_used,))
    infos = [_info(raw, used.get(kid))[0] for kid, raw in records.items()]
    infos = [i for i in infos if include_revoked or i.active]
    return sorted(infos, key=lambda i: (i.created_at_ms, i.id))


def _revoke(keys: Keys, name_or_id: str) -> Op:
    """Revoke the active key with this name, else with this id; its KeyInfo, or None."""
    key_id = (yield _Call("hget", (keys.api_key_names, name_or_id))) or name_or_id
    raw = yield _Call("hget", (keys.api_keys, key_id))
    if raw is None:
        return None
    info, key_digest = _info(raw)
    if not info.active:
        return None
    revoked = KeyInfo(**{**info.__dict__, "revoked_at_ms": _now_ms()})
    ok = yield _Call("eval", (REVOKE_LUA, 3, keys.api_keys, keys.api_key_names,
                              keys.api_key(key_digest), info.id, info.name,
                              _record(revoked, key_digest)))  # fmt: skip
    return revoked if int(ok) else None


def _verify(keys: Keys, token: str, touched: dict[str, float]) -> Op:
    if not looks_like_key(token):
        return None
    fields = yield _Call("hgetall", (keys.api_key(digest(token)),))
    if not fields or "id" not in fields:
        return None
    principal = Principal(name=fields["name"], key_id=fields["id"],
                          roles=frozenset(fields["roles"].split(",")))  # fmt: skip
    now = time.monotonic()
    if now - touched.get(principal.key_id, -TOUCH_INTERVAL_S) >= TOUCH_INTERVAL_S:
        touched[principal.key_id] = now
        yield _Call("hset", (keys.api_key_used, principal.key_id, _now_ms()))
    return principal


def _run(client, op: Op) -> Any:
    try:
        call = next(op)
        while True:
            call = op.send(getattr(client, call.method)(*call.args))
    except StopIteration as done:
        return done.value


async def _run_async(client, op: Op) -> Any:
    try:
        call = next(op)
        while True:
            call = op.send(await getattr(client, call.method)(*call.args))
    except StopIteration as done:
        return done.value


@dataclass
class KeyStore:
    """API keys on a sync redis client (``decode_responses=True``, as redisdb.connect)."""

    client: Any
    keys: Keys
    _touched: dict[str, float] = field(default_factory=dict, repr=False)

    def create(self, name: str, roles: Iterable[str]) -> CreatedKey:
        return _run(self.client, _create(self.keys, name, roles))

    def list(self, include_revoked: bool = False) -> list[KeyInfo]:
        return _run(self.client, _list(self.keys, include_revoked))

    def revoke(self, name_or_id: str) -> KeyInfo | None:
        return _run(self.client, _revoke(self.keys, name_or_id))

    def verify(self, token: str) -> Principal | None:
        return _run(self.client, _verify(self.keys, token, self._touched))

    def any_active(self) -> bool:
        """Whether any key exists (the API runs open on loopback only when none does)."""
        return bool(self.client.hlen(self.keys.api_key_names))


@dataclass
class AsyncKeyStore:
    """The same store on a ``redis.asyncio`` client, for the API."""

    client: Any
    keys: Keys
    _touched: dict[str, float] = field(default_factory=dict, repr=False)

    async def create(self, name: str, roles: Iterable[str]) -> CreatedKey:
        return await _run_async(self.client, _create(self.keys, name, roles))

    async def list(self, include_revoked: bool = False) -> list[KeyInfo]:
        return await _run_async(self.client, _list(self.keys, include_revoked))

    async def revoke(self, name_or_id: str) -> KeyInfo | None:
        return await _run_async(self.client, _revoke(self.keys, name_or_id))

    async def verify(self, token: str) -> Principal | None:
        return await _run_async(self.client, _verify(self.keys, token, self._touched))

    async def any_active(self) -> bool:
        return bool(await self.client.hlen(self.keys.api_key_names))
