"""How a policy becomes the live or shadow version: validated, then published in Redis.

The API publishes the configured file at start, watches it (and the files it includes)
for edits, and publishes what clients name or upload (policy.library); workers follow the
published versions between batches.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from service.config import Settings
from service.policy import PolicyError, load_policy
from service.policy.parse import LoadedPolicy, policy_files
from service.store import PolicyRegistry

log = logging.getLogger("floodgate.api")


def publish(
    registry: PolicyRegistry, lp: LoadedPolicy, role: str = "live", actor: str = "(server)"
) -> dict:
    """Make a validated policy the live (or shadow) version; the history names the actor."""
    changed = registry.publish(lp.bundle(), lp.version, lp.name, role=role, actor=actor)
    if changed:
        log.info("%s policy is now %s (%s, from %s, by %s)", role, lp.version, lp.name,
                 lp.source, actor)  # fmt: skip
    return {"role": role, "name": lp.name, "version": lp.version, "changed": changed}


def publish_file(
    registry: PolicyRegistry, path: Path, role: str = "live", actor: str = "(server)"
) -> dict:
    """Validate the policy at `path` (server configuration, never a client's path) and
    publish it. Raises PolicyError (with `check`'s file:line errors) and then changes nothing.
    """
    return publish(registry, load_policy(path), role, actor)


def publish_at_start(registry: PolicyRegistry, settings: Settings) -> None:
    try:
        publish_file(registry, settings.policy_path)
    except PolicyError as exc:
        if registry.current()["live"] is None:
            raise
        log.error("policy file is invalid; the live version stays:\n%s", exc)
    if settings.shadow_policy_path:
        publish_file(registry, settings.shadow_policy_path, role="shadow")


def _fingerprint(path: Path) -> tuple:
    """Modification times and sizes of the policy and the files it includes."""
    try:
        files = policy_files(path)
    except PolicyError:
        files = [path]  # invalid right now: watch the file itself until it is fixed
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(f), None, None))
    return tuple(out)


async def watch_policy(registry: PolicyRegistry, settings: Settings) -> None:
    """Poll the policy files; publish a valid change, log an invalid one (the live one stays).

    Polling keeps it dependency-free and works on every file system (bind mounts, NFS).
    """
    path = settings.policy_path
    seen = await asyncio.to_thread(_fingerprint, path)
    while True:
        await asyncio.sleep(settings.policy_watch_interval_s)
        try:
            now = await asyncio.to_thread(_fingerprint, path)
            if now == seen:
                continue
            seen = now
            await asyncio.to_thread(publish_file, registry, path)
        except PolicyError as exc:
            log.error("policy edit refused, the live version stays:\n%s", exc)
        except Exception:  # the watcher must survive a Redis hiccup
            log.exception("policy watcher")
