"""API keys (service/auth.py) on the real Redis, and the `floodgate keys` commands."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from service.auth import (
    OPEN_PRINCIPAL,
    ROLES,
    Access,
    AsyncKeyStore,
    InvalidName,
    KeyStore,
    NameTaken,
    Principal,
    UnknownRole,
    authorize,
    denial,
    digest,
    effective_roles,
    parse_bearer,
    parse_roles,
)
from service.config import REPO_ROOT
from service.queue import Keys
from service.redisdb import connect, connect_async


@pytest.fixture
def store(settings) -> KeyStore:
    return KeyStore(connect(settings.redis_url), Keys(settings.key_prefix))


def stored_values(client, prefix: str) -> list[str]:
    """Every key name, field and value under the prefix, as text."""
    out = []
    for name in client.scan_iter(f"{prefix}:*"):
        out.append(name)
        kind = client.type(name)
        if kind == "hash":
            for f, v in client.hgetall(name).items():
                out += [f, v]
        elif kind == "string":
            out.append(client.get(name))
        else:
            raise AssertionError(f"unexpected {kind} at {name}")
    return out


# -- pure parts --------------------------------------------------------------------------


def principal(*roles: str) -> Principal:
    return Principal(name="p", roles=frozenset(roles), key_id="k1")


ROLE_TABLE = [
    # key roles, required role, outcome
    ((), "submit", Access.FORBIDDEN),
    (("submit",), "submit", Access.ALLOW),
    (("submit",), "read", Access.FORBIDDEN),
    (("submit",), "admin", Access.FORBIDDEN),
    (("read",), "read", Access.ALLOW),
    (("read",), "review", Access.FORBIDDEN),
    (("review",), "review", Access.ALLOW),
    (("review",), "read", Access.FORBIDDEN),
    (("review",), "admin", Access.FORBIDDEN),
    (("read", "review"), "review", Access.ALLOW),
    (("read", "review"), "read", Access.ALLOW),
    (("read", "review"), "submit", Access.FORBIDDEN),
    (("admin",), "submit", Access.ALLOW),
    (("admin",), "read", Access.ALLOW),
    (("admin",), "review", Access.ALLOW),
    (("admin",), "admin", Access.ALLOW),
    (("submit", "read", "review"), "admin", Access.FORBIDDEN),
]


@pytest.mark.parametrize(("roles", "required", "expected"), ROLE_TABLE)
def test_roles_map_to_access(roles, required, expected):
    assert authorize(principal(*roles), required) is expected


@pytest.mark.parametrize("required", [*ROLES, None])
def test_no_key_is_unauthenticated_except_on_open_routes(required):
    expected = Access.ALLOW if required is None else Access.UNAUTHENTICATED
    assert authorize(None, required) is expected
    assert authorize(OPEN_PRINCIPAL, required) is Access.ALLOW


def test_unknown_required_role_is_a_programming_error():
    with pytest.raises(ValueError):
        authorize(principal("admin"), "superuser")


def test_admin_implies_every_role():
    assert effective_roles({"admin"}) == frozenset(ROLES)
    assert effective_roles({"read"}) == {"read"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["review"], {"review"}),
        (["read,review"], {"read", "review"}),
        (["Read", " submit "], {"read", "submit"}),
        (["admin", "admin"], {"admin"}),
    ],
)
def test_parse_roles(values, expected):
    assert parse_roles(values) == expected


@pytest.mark.parametrize("values", [[], [""], ["boss"], ["read,boss"]])
def test_parse_roles_refuses(values):
    with pytest.raises(UnknownRole):
        parse_roles(values)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer fg_abc", "fg_abc"),
        ("bearer   fg_abc  ", "fg_abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("fg_abc", None),
    ],
)
def test_parse_bearer(header, token):
    assert parse_bearer(header) == token


@pytest.mark.parametrize(
    ("access", "key_given", "status", "error", "kind"),
    [
        (Access.UNAUTHENTICATED, False, 401, "unauthorized", "missing_key"),
        (Access.UNAUTHENTICATED, True, 401, "unauthorized", "invalid_key"),
        (Access.FORBIDDEN, True, 403, "forbidden", "missing_role"),
    ],
)
def test_denials_use_the_one_error_shape(access, key_given, status, error, kind):
    code, body, headers = denial(access, "admin", key_given=key_given)
    assert code == status
    assert body["error"] == error
    assert body["detail"] == [{"field": "authorization", "message": body["detail"][0]["message"],
                               "type": kind}]  # fmt: skip
    assert ("WWW-Authenticate" in headers) == (status == 401)


def test_audit_identity_names_the_key():
    p = Principal(name="alice", roles=frozenset({"review"}), key_id="k123")
    assert p.audit() == {"actor": "alice", "actor_key_id": "k123"}
    assert OPEN_PRINCIPAL.audit()["actor"] == "(open)"


# -- the store on Redis --------------------------------------------------------------------


def test_created_key_verifies_with_its_roles(store):
    created = store.create("alice", ["review", "read"])
    assert created.token.startswith("fg_") and len(created.token) == 46
    p = store.verify(created.token)
    assert p == Principal(name="alice", roles=frozenset({"read", "review"}), key_id=created.info.id)
    assert created.info.roles == ("read", "review")


@pytest.mark.parametrize(
    "token",
    ["", "fg_", "not-a-key", "fg_" + "A" * 43, "Bearer fg_x", "fg_" + "A" * 500],
)
def test_unknown_or_malformed_tokens_do_not_verify(store, token):
    store.create("alice", ["read"])
    assert store.verify(token) is None


def test_a_revoked_key_stops_verifying(store):
    alice = store.create("alice", ["review"])
    bob = store.create("bob", ["read"])
    assert store.verify(alice.token) is not None
    revoked = store.revoke("alice")
    assert revoked is not None and revoked.id == alice.info.id and not revoked.active
    assert store.verify(alice.token) is None
    assert store.verify(bob.token) is not None  # the others keep working
    assert store.revoke("alice") is None  # nothing left to revoke
    assert store.revoke(bob.info.id).name == "bob"  # by id
    assert store.verify(bob.token) is None
    assert not store.any_active()


def test_a_revoked_name_can_be_reused_by_a_new_key(store):
    old = store.create("ci", ["submit"])
    with pytest.raises(NameTaken):
        store.create("ci", ["submit"])
    store.revoke("ci")
    new = store.create("ci", ["submit"])
    assert store.verify(old.token) is None
    assert store.verify(new.token).key_id == new.info.id != old.info.id
    everything = store.list(include_revoked=True)
    assert sorted((i.id, i.active) for i in everything) == sorted(
        [(old.info.id, False), (new.info.id, True)]
    )


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "(open)", "名前"])
def test_invalid_names_are_refused(store, name):
    with pytest.raises(InvalidName):
        store.create(name, ["read"])


def test_list_never_shows_a_secret(store):
    created = [store.create(f"user{i}", [role]) for i, role in enumerate(ROLES)]
    store.verify(created[0].token)  # records a last use
    listed = store.list()
    by_name = {i.name: i for i in listed}
    assert sorted(by_name) == ["user0", "user1", "user2", "user3"]
    assert by_name["user0"].last_used_at_ms is not None
    assert by_name["user1"].last_used_at_ms is None
    text = json.dumps([i.to_dict() for i in listed]) + repr(listed)
    for c in created:
        assert c.token not in text
        assert c.token[7:] not in text  # nothing of the secret past the 4-character hint
        assert digest(c.token) not in text


def test_stored_values_contain_no_plain_key(store):
    created = [store.create("alice", ["admin"]), store.create("bob", ["read", "submit"])]
    for c in created:
        store.verify(c.token)
    store.revoke("bob")
    values = stored_values(store.client, store.keys.prefix)
    assert values  # the check below looked at something
    for c in created:
        secret = c.token.removeprefix("fg_")
        assert not any(secret in v or secret[4:] in v for v in values)
        # what is stored is the sha256
        assert any(digest(c.token) in v for v in values)


def test_async_store_shares_the_data(settings, store):
    async def main():
        client = connect_async(settings.redis_url)
        astore = AsyncKeyStore(client, Keys(settings.key_prefix))
        try:
            created = await astore.create("async-key", ["submit"])
            seen = await astore.verify(created.token)
            names = [i.name for i in await astore.list()]
            revoked = await astore.revoke("async-key")
            after = await astore.verify(created.token)
            return created, seen, names, revoked, after
        finally:
            await client.aclose()

    created, seen, names, revoked, after = asyncio.run(main())
    assert seen.name == "async-key" and seen.roles == {"submit"}
    assert names == ["async-key"]
    assert revoked.id == created.info.id and after is None
    # the sync store sees what the async one wrote
    assert store.list(include_revoked=True)[0].revoked_at_ms is not None


# -- the CLI -------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", "keys", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)  # fmt: skip


def test_cli_round_trip(settings, store):
    env = {**os.environ, "REDIS_URL": settings.redis_url,
           "FLOODGATE_KEY_PREFIX": settings.key_prefix}  # fmt: skip
    made = cli("create", "--role", "review", "--name", "alice", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("fg_") and "\n" not in token  # stdout is the key alone
    assert "cannot be shown again" in made.stderr
    assert store.verify(token).roles == {"review"}

    twice = cli("create", "--role", "review", "--name", "alice", env=env)
    assert twice.returncode == 2 and "already named" in twice.stderr
    bad = cli("create", "--role", "boss", "--name", "bob", env=env)
    assert bad.returncode == 2 and "unknown role" in bad.stderr

    listed = cli("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["roles"], r["active"]) for r in rows] == [("alice", ["review"], True)]
    table = cli("list", env=env)
    assert "alice" in table.stdout and "review" in table.stdout
    for out in (listed.stdout, table.stdout):
        assert token not in out and token[7:] not in out

    revoked = cli("revoke", "alice", env=env)
    assert revoked.returncode == 0 and "alice" in revoked.stdout
    assert store.verify(token) is None
    assert cli("revoke", "alice", env=env).returncode == 1
    assert json.loads(cli("list", "--json", env=env).stdout) == []
    assert json.loads(cli("list", "--json", "--all", env=env).stdout)[0]["revoked_at"]


def test_cli_without_redis_url_uses_the_embedded_servers_data(tmp_path):
    """Keys made before the first `serve` land in the data dir that `serve` will load."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FLOODGATE_REDIS_URL")}
    env.update(FLOODGATE_DATA_DIR=str(tmp_path), FLOODGATE_KEY_PREFIX="fg")
    made = cli("create", "--role", "admin", "--name", "ops", env=env)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "redis" / "appendonly.aof").exists()
    # a second command starts the server again from the AOF and finds the key
    rows = json.loads(cli("list", "--json", env=env).stdout)
    assert [(r["name"], r["roles"]) for r in rows] == [("ops", ["admin"])]
