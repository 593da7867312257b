"""The policies a client may name: files inside the policy directory, and nothing else.

The API takes a candidate policy by name (a relative path inside the directory) or as
uploaded text, never as a server path: a name that climbs out (``..``, an absolute path),
a link that leads out, a device, a FIFO or an oversized file is refused before a byte is
read, so no error can quote a file from outside the directory. Files a policy includes
(keyword lists) are read through the same door.

The server's own configured policy file (``FLOODGATE_POLICY_PATH``) is trusted
configuration and is loaded with ``parse.load_policy``; this module is for what clients send.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from service.policy.parse import LoadedPolicy, parse_policy

MAX_POLICY_BYTES = 1024 * 1024  # the default policy with its lists is ~60 kB


class PolicyRefused(ValueError):
    """A policy name the directory will not serve; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class PolicyDirectory:
    root: Path
    max_bytes: int = MAX_POLICY_BYTES

    def path(self, name: str, field: str = "name") -> Path:
        """The regular file ``name`` inside the directory, links resolved; else PolicyRefused."""
        rel = PurePosixPath(name)
        if (not name or "\\" in name or "\0" in name or rel.is_absolute()
                or ".." in rel.parts or name != name.strip()):  # fmt: skip
            raise PolicyRefused(
                422, field, f"{name!r} is not a name inside the policy directory "
                "(a relative path without '..')",
            )  # fmt: skip
        root = self.root.resolve()
        try:
            resolved = (root / rel).resolve(strict=True)
        except FileNotFoundError:
            raise PolicyRefused(404, field, f"no policy file {name!r}") from None
        except (OSError, RuntimeError):  # a link loop, a component that is not a directory
            raise PolicyRefused(422, field, f"{name!r} cannot be resolved") from None
        if not resolved.is_relative_to(root):
            raise PolicyRefused(403, field, f"{name!r} leads out of the policy directory")
        info = resolved.stat()
        if not stat.S_ISREG(info.st_mode):
            raise PolicyRefused(422, field, f"{name!r} is not a regular file")
        if info.st_size > self.max_bytes:
            raise PolicyRefused(
                413, field, f"{name!r} is {info.st_size} bytes; the limit is {self.max_bytes}"
            )
        return resolved

    def read(self, name: str, field: str = "name") -> bytes:
        with open(self.path(name, field), "rb") as f:
            data = f.read(self.max_bytes + 1)  # the file may have grown since the stat
        if len(data) > self.max_bytes:
            raise PolicyRefused(413, field, f"{name!r} is over the limit of {self.max_bytes} bytes")
        return data

    def _include(self, base: PurePosixPath, name: str) -> bytes:
        """An included file, through the same checks; parse reports OSError per include."""
        try:
            return self.read(str(base / name))
        except PolicyRefused as exc:
            raise OSError(errno.EACCES, exc.message) from None

    def load(self, name: str) -> LoadedPolicy:
        """The named policy; PolicyRefused for a refused name, PolicyError if it is invalid."""
        data = self.read(name)
        base = PurePosixPath(name).parent
        return parse_policy(data, source=name, resolve=lambda inc: self._include(base, inc))

    def load_text(self, text: str, source: str = "<uploaded>") -> LoadedPolicy:
        """An uploaded policy; what it includes is read from the policy directory."""
        if len(text.encode("utf-8")) > self.max_bytes:
            raise PolicyRefused(413, "text", f"the policy is over the limit of {self.max_bytes} bytes")
        return parse_policy(text, source=source,
                            resolve=lambda inc: self._include(PurePosixPath("."), inc))  # fmt: skip
