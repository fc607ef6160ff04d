"""The people who may sign in to a shared chat, kept in ``DATA_DIR/users.json``.

Passwords are stored as bcrypt hashes (slow and salted, so a copied file does not
give the passwords away); the file is written owner-only and replaced atomically.

    python -m rag.users add NAME       # asks for the password twice
    python -m rag.users remove NAME
    python -m rag.users list

>>> add_user(settings, "ana", "correct horse")      # doctest: +SKIP
>>> check_password(settings, "ana", "correct horse") # doctest: +SKIP
True
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import bcrypt

from rag.errors import RagError
from rag.settings import Settings, get_settings

USERS_FILE = "users.json"  # under DATA_DIR
MIN_PASSWORD = 8
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# Checked when the name is unknown, so a wrong name costs as long as a wrong password.
_NO_USER_HASH = bcrypt.hashpw(b"no such user", bcrypt.gensalt())


class UserError(RagError):
    """A user cannot be added or removed as asked; the sentence says why."""


def users_path(settings: Settings) -> Path:
    """Where the users live: ``DATA_DIR/users.json``."""
    return settings.data_dir / USERS_FILE


def _load(settings: Settings) -> dict[str, str]:
    path = users_path(settings)
    try:
        users = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(
            f"The users file {path} cannot be read ({exc}): fix or remove it, then add the "
            "users again with `python -m rag.users add NAME`."
        ) from None
    return {str(k): str(v) for k, v in users.items()} if isinstance(users, dict) else {}


def _save(settings: Settings, users: dict[str, str]) -> None:
    path = users_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the rename makes the new list appear whole.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".users-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(users, out, indent=1, sort_keys=True)
    os.replace(tmp, path)


def list_users(settings: Settings) -> list[str]:
    """The names of the users who may sign in, sorted."""
    return sorted(_load(settings))


def add_user(settings: Settings, name: str, password: str) -> None:
    """Add ``name`` with ``password``, or give an existing user a new password."""
    if not NAME.fullmatch(name):
        raise UserError(
            f"'{name}' cannot be a user name: use letters, digits and . _ @ - (at most 64)."
        )
    if len(password) < MIN_PASSWORD:
        raise UserError(f"The password is too short: use at least {MIN_PASSWORD} characters.")
    users = _load(settings)
    users[name] = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")
    _save(settings, users)


def remove_user(settings: Settings, name: str) -> None:
    """Remove ``name``; their saved chats stay in the history until the user is added again."""
    users = _load(settings)
    if name not in users:
        raise UserError(f"There is no user '{name}'; `python -m rag.users list` shows them.")
    del users[name]
    _save(settings, users)


def check_password(settings: Settings, name: str, password: str) -> bool:
    """True when ``name`` is a user and ``password`` is theirs (takes ~0.2 s either way)."""
    stored = _load(settings).get(name)
    hashed = stored.encode("ascii") if stored else _NO_USER_HASH
    try:
        matches = bcrypt.checkpw(password.encode("utf-8"), hashed)
    except ValueError:  # a hash edited by hand
        return False
    return matches and stored is not None


def _ask_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise UserError("The two passwords differ; nothing was changed.")
    return first


def main(argv: list[str] | None = None) -> int:
    """``python -m rag.users add NAME | remove NAME | list``."""
    parser = argparse.ArgumentParser(prog="python -m rag.users", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user, or set a new password")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    commands.add_parser("remove", help="remove a user").add_argument("name")
    commands.add_parser("list", help="list the users")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        if args.command == "add":
            add_user(settings, args.name, _ask_password(args.password_stdin))
            print(f"{args.name} can sign in now.")
        elif args.command == "remove":
            remove_user(settings, args.name)
            print(f"{args.name} was removed.")
        else:
            print("\n".join(list_users(settings)) or "No users yet: python -m rag.users add NAME")
    except RagError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
