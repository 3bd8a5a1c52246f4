"""Who job processes run as, and the start-up checks that keep the server's files from them.

A job's code must not have the server's privileges: as the server's user it could
read the server's environment and command line in /proc (the database URL, the
`CRONWIRE_SECRET_*` variables), the secrets file and the database, and so make
itself an admin key. So a server that runs as root runs `shell` and `python`
jobs as another user: `--run-as USER`, else `cronwire-jobs` when that user
exists (deploy/ creates it), else `nobody`; only `--allow-root-jobs` runs them as
root. A server that does not run as root runs them as its own user (it cannot
switch), which isolates nothing: see docs/security.md.

Switching users must not make every start fork the whole server: subprocess's
`user=`/`group=` arguments do (CPython uses vfork only when no user switch is
asked for), which costs tens of milliseconds per job for a large server. So the
job is started through `setpriv` (util-linux), exec'd on the fast path, which
sets the user, its group and its supplementary groups, then execs the job's
program: the same process, so its process group and the fence are unchanged.
Without `setpriv`, subprocess's arguments are used, on the slow path.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ["JOB_USERS", "SAFE_PATH", "JobUser", "choose_job_user", "warn_exposed"]

# Tried in order when a root server is given no --run-as.
JOB_USERS = ("cronwire-jobs", "nobody")
# A job's PATH unless its env sets one: the server's PATH is not passed on.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# The umask of a server whose jobs run as another user (the files it creates are its own),
# and the one its jobs start with.
SERVER_UMASK, JOB_UMASK = 0o077, 0o022

_log = logging.getLogger(__name__)
_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")


@dataclass(frozen=True)
class JobUser:
    """The user job processes run as."""

    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...] = ()

    @classmethod
    def named(cls, name: str) -> JobUser:
        """The user of that name (or number); LookupError if there is none."""
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            raise LookupError(f"no user {name!r} on this machine") from None
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, groups)

    @classmethod
    def server(cls) -> JobUser:
        """The user the server runs as."""
        uid = os.geteuid()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(str(uid), uid, os.getegid(), os.environ.get("HOME", "/"), tuple(os.getgroups()))
        return cls(entry.pw_name, uid, os.getegid(), entry.pw_dir, tuple(os.getgroups()))

    @property
    def switches(self) -> bool:
        """Whether a job runs as another user than the server."""
        return self.uid != os.geteuid()

    def spawn(self, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
        """The argv and subprocess arguments that run `argv` as this user."""
        if not self.switches:
            return argv, {}
        if _SETPRIV is not None:
            groups = f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups"
            return [_SETPRIV, f"--reuid={self.uid}", f"--regid={self.gid}", groups, "--", *argv], {
                "umask": JOB_UMASK
            }
        return argv, {
            "user": self.uid,
            "group": self.gid,
            "extra_groups": list(self.groups),
            "umask": JOB_UMASK,
        }

    def environment(self) -> dict[str, str]:
        """The variables a job starts with, before its own `env`: none of the server's."""
        return {
            "PATH": SAFE_PATH,
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "LANG": "C.UTF-8",
        }

    def own(self, path: str) -> None:
        """Hand a directory made for a run over to this user."""
        if self.switches:
            os.chown(path, self.uid, self.gid)


def choose_job_user(run_as: str, allow_root_jobs: bool) -> JobUser:
    """The user jobs run as, from `--run-as` and `--allow-root-jobs`; ValueError if it cannot be."""
    root = os.geteuid() == 0
    if run_as:
        try:
            user = JobUser.named(run_as)
        except LookupError as error:
            raise ValueError(f"--run-as: {error}") from None
        if user.uid == 0 and not allow_root_jobs:
            raise ValueError("--run-as: jobs run as root only with --allow-root-jobs")
        if user.switches and not root:
            raise ValueError(f"--run-as {run_as}: only a server running as root can run jobs as another user")
        return user
    if not root or allow_root_jobs:
        return JobUser.server()
    for name in JOB_USERS:
        try:
            return JobUser.named(name)
        except LookupError:
            continue
    raise ValueError(
        f"the server runs as root and none of {', '.join(JOB_USERS)} exists to run jobs as: "
        "give --run-as USER (or --allow-root-jobs to run jobs as root)"
    )


def warn_exposed(
    user: JobUser, database_url: str, files: list[str], argv: list[str] | None = None
) -> list[str]:
    """Log (and return) a warning for each server secret the job user could read: the SQLite
    database, the given files (secrets file, TLS key), the server's working directory, a
    database URL on the command line."""
    if not user.switches:
        return []
    warnings: list[str] = []
    url = make_url(database_url)
    paths = list(files)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        paths += [url.database + suffix for suffix in ("", "-wal", "-shm", "-journal")]
    for path in paths:
        if path and os.path.exists(path) and readable_by(path, user):
            warnings.append(
                f"jobs run as {user.name} and can read {os.path.abspath(path)}: make it readable by the "
                "server's user only (chmod 600, in a directory jobs cannot enter)"
            )
    # Where the server keeps its state by default (the SQLite database, files it writes).
    here = os.getcwd()
    if readable_by(here, user):
        warnings.append(
            f"jobs run as {user.name} and can list the server's working directory {here}: make it "
            "the server's user's only (chmod 700)"
        )
    arguments = sys.argv if argv is None else argv
    if url.get_backend_name() != "sqlite" and any(a.split("=", 1)[0] == "--database-url" for a in arguments):
        warnings.append(
            "the database URL is on the command line, which every user of this machine (jobs "
            "included) can read in /proc: give it as CRONWIRE_DATABASE_URL instead"
        )
    for warning in warnings:
        _log.warning("%s", warning)
    return warnings


def can_enter(path: str, user: JobUser) -> bool:
    """Whether `user` could make `path` its working directory (the server enters it for the job,
    before the switch, so it must tell)."""
    if user.uid == 0:
        return True
    target = Path(path).resolve()
    try:
        return all(_allows(os.stat(d), user, 1) for d in (*target.parents, target))
    except OSError:
        return True  # what does not exist is for the spawn to report


def readable_by(path: str, user: JobUser) -> bool:
    """Whether `user` could read `path` by its permission bits (ACLs aside)."""
    if user.uid == 0:
        return True
    target = Path(path).resolve()
    try:
        return all(_allows(os.stat(d), user, 1) for d in target.parents) and _allows(os.stat(target), user, 4)
    except OSError:
        return False


def _allows(info: os.stat_result, user: JobUser, bit: int) -> bool:
    if info.st_uid == user.uid:
        return bool(info.st_mode & (bit << 6))
    if info.st_gid == user.gid or info.st_gid in user.groups:
        return bool(info.st_mode & (bit << 3))
    return bool(info.st_mode & bit)
