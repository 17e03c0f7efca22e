"""Maintenance of a token cache, as library calls: look, clear, move, rotate the key.

Everything the ``msal-keyring-cache`` command does is one of these functions; the command
only parses its arguments and prints the result. Each takes resolved
:class:`~msal_keyring_cache.Settings`::

    from msal_keyring_cache import Settings, manage

    settings = Settings.resolve(app_name="my-tool")
    print(manage.status(settings).problem or "fine")
    manage.remove_account(settings, "alice@example.com")

The looking functions (:func:`status`, :func:`accounts`, :func:`export`) are read-only:
they never write, move or create anything, not even a key file. Damaged or foreign data
is reported, not set aside. No function here returns or logs a token, except
:func:`export`, whose job it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Optional

from . import crypto
from .cache import PersistentTokenCache
from .config import Settings, check_path, check_secret
from .errors import (
    CacheError,
    CommandError,
    ConfigError,
    CorruptCacheError,
    DecryptError,
    StoreError,
)
from .files import atomic_write, read_file
from .stores.base import Description

__all__ = [
    "ROTATION_STEPS",
    "Account",
    "Moved",
    "Rotation",
    "Status",
    "accounts",
    "advice",
    "clear",
    "count_entries",
    "export",
    "move",
    "not_regular",
    "open_cache",
    "parse_cache",
    "read",
    "remove_account",
    "rotate_key",
    "status",
    "usernames",
    "verify",
    "write_private",
]

logger = logging.getLogger("msal_keyring_cache")

#: The credential types msal keeps, in the order ``status`` lists them.
KINDS = ("AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata")

#: The steps :func:`rotate_key` reports to its ``progress`` callback, in order.
ROTATION_STEPS = ("keys-added", "reencrypted", "verified")


# -- opening and reading ---------------------------------------------------------------


def open_cache(settings: Settings, *, read_only: bool = False) -> PersistentTokenCache:
    """The cache ``settings`` describe.

    ``read_only``: see :func:`~msal_keyring_cache.factory.build_store`.
    """
    from .factory import build_store

    store, info = build_store(settings, read_only=read_only)
    logger.debug(
        "Opened the %s store at %s%s: %s",
        info.backend,
        store.describe().location,
        " (read-only)" if read_only else "",
        info.reason,
    )
    return PersistentTokenCache(store, backend_info=info)


def parse_cache(text: str, where: str = "the cache") -> dict[str, Any]:
    """msal's cache JSON as a dict of credential types; :class:`CorruptCacheError` if it is not."""
    try:
        doc = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        raise CorruptCacheError(f"{where} is not JSON, so it is not an msal token cache") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise CorruptCacheError(
            f"{where} is not an msal token cache (expected a JSON object of credential types)"
        )
    return doc


def count_entries(doc: dict[str, Any]) -> int:
    """How many entries a parsed cache holds, over every credential type."""
    return sum(len(v) for v in doc.values())


def _counts(doc: dict[str, Any]) -> dict[str, int]:
    counts = {kind: len(doc.get(kind, {})) for kind in KINDS}
    counts.update({k: len(v) for k, v in doc.items() if k not in counts})
    return counts


def _iso(epoch: Any) -> Optional[str]:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
    except (TypeError, ValueError, OverflowError, OSError):
        return None


@dataclasses.dataclass(frozen=True)
class Account:
    """One signed-in account, from the non-secret fields of the cache (never a token)."""

    username: Optional[str]
    home_account_id: Optional[str]
    environment: Optional[str]
    realm: Optional[str]
    #: Which of AccessToken, RefreshToken, IdToken the cache holds for it.
    token_types: list[str]
    #: Per access token: ``scopes``, ``realm``, ``client_id``, ``expires_on``, ``expired``.
    access_tokens: list[dict[str, Any]]
    #: Whether a refresh token is kept (silent sign-in keeps working).
    refresh_token: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def _accounts_of(doc: dict[str, Any]) -> list[Account]:
    now = time.time()
    rows = []
    for account in doc.get("Account", {}).values():
        if not isinstance(account, dict):
            continue
        home, env = account.get("home_account_id"), account.get("environment")
        mine = {
            kind: [
                e
                for e in doc.get(kind, {}).values()
                if isinstance(e, dict)
                and e.get("home_account_id") == home
                and e.get("environment") == env
            ]
            for kind in ("AccessToken", "RefreshToken", "IdToken")
        }
        access = []
        for entry in mine["AccessToken"]:
            expires = entry.get("expires_on")
            try:
                expired: Optional[bool] = int(str(expires)) <= now
            except (TypeError, ValueError):
                expired = None
            access.append(
                {
                    "scopes": str(entry.get("target", "")),
                    "realm": entry.get("realm"),
                    "client_id": entry.get("client_id"),
                    "expires_on": _iso(expires),
                    "expired": expired,
                }
            )
        rows.append(
            Account(
                username=_text(account.get("username")),
                home_account_id=_text(home),
                environment=_text(env),
                realm=_text(account.get("realm")),
                token_types=[k for k in ("AccessToken", "RefreshToken", "IdToken") if mine[k]],
                access_tokens=sorted(access, key=lambda a: a["expires_on"] or ""),
                refresh_token=bool(mine["RefreshToken"]),
            )
        )
    return sorted(rows, key=lambda r: (str(r.username).lower(), str(r.home_account_id)))


def usernames(doc: dict[str, Any]) -> list[str]:
    """The usernames of a parsed cache's accounts, sorted."""
    return [str(a.username) for a in _accounts_of(doc)]


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class Status:
    """What :func:`status` found: where the cache lives, what it holds, what is wrong."""

    backend: str
    reason: str
    description: Description
    counts: dict[str, int]
    accounts: list[str]
    #: What is wrong, in plain words (``None``: nothing).
    problem: Optional[str] = None
    #: What to do about :attr:`problem`.
    fix: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the headline fields, then ``store`` with every described fact."""
        store = self.description.as_dict()
        return {
            "backend": self.backend,
            "reason": self.reason,
            "location": store["location"],
            "protection": store["protection"],
            "protection_level": store["protection_level"],
            "exists": store["exists"],
            "size": store["size"],
            "last_write": store["last_write"],
            "lock_file": store["lock_file"],
            "counts": self.counts,
            "accounts": self.accounts,
            "problem": self.problem,
            "fix": self.fix,
            "store": store,
        }


def not_regular(described: Description) -> Optional[str]:
    """Why a file store's path cannot hold a cache (a directory, a FIFO …), else ``None``."""
    if described.backend != "file":
        return None
    try:
        mode = os.lstat(described.location).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
    return (
        f"{described.location} is {kind}, so it cannot hold the cache; point the path "
        "setting at a file"
    )


def read(settings: Settings) -> tuple[dict[str, Any], PersistentTokenCache]:
    """Read the cache without changing anything; the parsed JSON and the (read-only) cache.

    Raises :class:`~msal_keyring_cache.CacheError` (damaged, foreign, wrong key …); the
    caller closes the cache.
    """
    cache = open_cache(settings, read_only=True)
    try:
        odd = not_regular(cache.store.describe())
        if odd:
            raise StoreError(odd)
        text = cache.serialize()
    except CacheError:
        _close(cache)
        raise
    except ValueError:  # the store's bytes decrypted, but msal could not parse them
        _close(cache)
        raise CorruptCacheError("the stored cache decrypts, but is not JSON") from None
    logger.debug("Read %d characters of cache JSON", len(text))
    return parse_cache(text, "the stored cache"), cache


def status(settings: Settings) -> Status:
    """Where the cache lives, how it is protected, what it holds; read-only.

    A problem (damaged data, a file that is not ours, a wrong or missing key) is reported
    in :attr:`Status.problem` with a :attr:`Status.fix`, never repaired here. Raises only
    when no store can be opened at all.
    """
    from .factory import build_store

    store, info = build_store(settings, read_only=True)
    cache = PersistentTokenCache(store, backend_info=info)
    doc: dict[str, Any] = {}
    problem = fix = None
    try:
        odd = not_regular(store.describe())
        if odd:  # a FIFO would block the read, a directory cannot be read: do not try
            raise StoreError(odd)
        doc = parse_cache(cache.serialize(), "the stored cache")
    except CacheError as exc:
        problem, fix = str(exc), advice(exc, settings, store.describe())
    except ValueError:
        problem = "the stored cache decrypts, but is not JSON"
        fix = advice(CorruptCacheError(problem), settings, store.describe())
    finally:
        described = store.describe()  # before close: a direct reader forgets its backend
        _close(cache)
    if described.size is None and doc:
        # A credential-store entry has no file size: its JSON text is what it holds.
        size = len(json.dumps(doc, separators=(",", ":")))
        described = dataclasses.replace(described, size=size, exists=True)
    stamp = described.extra.get("stamp_file")
    if described.last_write is None and isinstance(stamp, str) and os.path.isfile(stamp):
        described = dataclasses.replace(described, last_write=_iso(os.stat(stamp).st_mtime))
    return Status(
        backend=info.backend,
        reason=info.reason,
        description=described,
        counts=_counts(doc),
        accounts=usernames(doc),
        problem=problem,
        fix=fix,
    )


def advice(exc: CacheError, settings: Settings, described: Optional[Description] = None) -> str:
    """What to do about ``exc`` met while reading, in one sentence."""
    location = described.location if described else settings.path
    if isinstance(exc, DecryptError):
        if settings.passphrase:
            return (
                f"Set {settings.env_var('passphrase')} to the passphrase the file was written "
                "with. Nothing was changed."
            )
        return (
            f"Configure the key the file was written with ({settings.env_var('key')}, "
            f"{settings.env_var('key_file')} or {settings.env_var('key_in_keyring')}). "
            "Nothing was changed."
        )
    if isinstance(exc, CorruptCacheError):
        if described is None and settings.backend != "keyring":
            from .factory import default_path

            location = settings.path or default_path(settings.app_name)
        elif described is not None and described.backend == "file":
            location = described.location
        else:
            location = None
        if location and _is_plaintext_msal(location):
            return (
                f"It holds a plaintext msal token cache (another tool's, such as the Azure "
                f"CLI's), not one of this library; nothing was changed. To bring its tokens "
                f"into the secure cache, point --path (or {settings.env_var('path')}) at a "
                f"new file or leave it unset, and run: msal-keyring-cache migrate --from "
                f"{location}"
            )
        if location:
            return (
                f"Nothing was changed. Restore {location} from a backup, or let the next "
                "sign-in (or clear) set it aside as a .corrupt-* copy and start empty."
            )
        return (
            "Nothing was changed. The next sign-in (or clear) sets the damaged entry aside "
            "and starts empty."
        )
    return "See the message; msal-keyring-cache doctor checks everything the cache needs."


def _is_plaintext_msal(path: str) -> bool:
    try:
        blob = read_file(path)
    except CacheError:
        return False
    if not blob:
        return False
    try:
        doc = parse_cache(blob.decode("utf-8"))
    except (CacheError, UnicodeDecodeError):
        return False
    return bool(set(doc) & set(KINDS))


def accounts(settings: Settings) -> list[Account]:
    """The signed-in accounts (never a token); read-only. Raises on a problem."""
    doc, cache = read(settings)
    _close(cache)
    return _accounts_of(doc)


def export(settings: Settings) -> str:
    """The whole cache as msal's plaintext JSON, **with refresh tokens**; read-only."""
    doc, cache = read(settings)
    _close(cache)
    return json.dumps(doc, indent=2)


def write_private(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically, mode 0600 (e.g. an export); the absolute path."""
    path = check_path(path, "output")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory; name a file to write.")
    os.close(atomic_write(path, text.encode("utf-8")))
    return path


# -- clearing ---------------------------------------------------------------------------


def _where(cache: PersistentTokenCache) -> str:
    return cache.store.describe().location or cache.backend_info.backend


def _check_cleared(settings: Settings, where: str) -> None:
    """Read the store again through a new object: a refused delete must not pass as done."""
    try:
        doc, fresh = read(settings)
    except DecryptError:
        raise StoreError(
            f"The cache in {where} could not be deleted: something is still stored there. "
            "Nobody was signed out."
        ) from None
    _close(fresh)
    if count_entries(doc):
        raise StoreError(
            f"The cache in {where} could not be deleted ({count_entries(doc)} entries are still "
            "there). Nobody was signed out; check the credential store's or file's permissions."
        )


def clear(settings: Settings) -> str:
    """Delete every account and token (and the http cache kept beside them); the location cleared.

    Raises :class:`~msal_keyring_cache.StoreError` when the store refuses the delete, and
    checks afterwards that nothing is left (a sign-out that did not happen never passes).
    """
    cache = open_cache(settings)
    where = _where(cache)
    cleared = dataclasses.replace(settings, backend=cache.store.backend)
    try:
        try:
            cache.clear()
        except OSError as exc:
            raise StoreError(
                f"The cache in {where} could not be deleted: {exc.strerror}. Nobody was signed out."
            ) from None
        except StoreError as exc:
            raise StoreError(
                f"The cache in {where} could not be deleted: {exc} Nobody was signed out."
            ) from None
        _forget_discovery(cache)
    finally:
        _close(cache)
    _check_cleared(cleared, where)
    if cleared.backend == "file":
        _remove_leftovers(where)
    logger.debug("Cleared the cache in %s", where)
    return where


def _forget_discovery(cache: PersistentTokenCache) -> None:
    """The http cache beside the token cache goes too. It holds no token (discovery
    documents and throttling answers only), so a failure is a warning, not a failed sign-out."""
    from .http_cache import HttpCache

    http = HttpCache.beside(cache.store)
    try:
        http.remove()
    except (CacheError, OSError) as exc:
        logger.warning(
            "The http cache beside %s was not deleted (%s); it holds no tokens.",
            _where(cache),
            type(exc).__name__,
        )
    finally:
        http.close()


def _remove_leftovers(path: str) -> None:
    """Damaged copies set aside (``<path>.corrupt-*``) and temporary files of killed writers
    still decrypt to tokens: a sign-out removes them too."""
    import glob

    directory, name = os.path.split(path)
    found = glob.glob(glob.escape(path) + ".corrupt-*")
    found += glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp"))
    for leftover in found:
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(
                f"The cache in {path} was deleted, but an old copy {leftover} could not be: "
                f"{exc.strerror}. Delete it by hand."
            ) from None
    if found:
        logger.debug("Removed %d set-aside or temporary copies", len(found))


def remove_account(settings: Settings, username: str) -> int:
    """Remove one user's account and tokens (username case-insensitive); entries removed.

    :class:`~msal_keyring_cache.CommandError` if no account has that username.
    """
    cache = open_cache(settings)
    try:
        with _locked(cache):
            cache.reload()
            doc = parse_cache(cache.serialize())
            wanted = username.lower()
            homes = {
                (a.get("home_account_id"), a.get("environment"))
                for a in doc.get("Account", {}).values()
                if isinstance(a, dict) and str(a.get("username", "")).lower() == wanted
            }
            if not homes:
                known = ", ".join(str(a.username) for a in _accounts_of(doc)) or "none"
                raise CommandError(
                    f"No account with username {username!r} in the cache (accounts: {known})."
                )
            removed = 0
            for entries in doc.values():
                for key in list(entries):
                    entry = entries[key]
                    if (
                        isinstance(entry, dict)
                        and (entry.get("home_account_id"), entry.get("environment")) in homes
                    ):
                        del entries[key]
                        removed += 1
            cache.deserialize(json.dumps(doc))
    finally:
        _close(cache)
    logger.debug("Removed %d entries of one account", removed)
    return removed


# -- moving ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Moved:
    """What :func:`move` did."""

    source: str  #: the store moved from (``file``, ``keyring``)
    source_location: str
    target: str  #: the store moved to
    target_location: str
    entries: int  #: entries copied and verified


def verify(settings: Settings, expected: dict[str, Any]) -> None:
    """Read the store back through a new object; :class:`StoreError` if an entry is missing."""
    doc, fresh = read(settings)
    _close(fresh)
    missing = sum(
        1 for kind, entries in expected.items() for key in entries if key not in doc.get(kind, {})
    )
    if missing:
        raise StoreError(
            f"{missing} entries are missing from the store after writing them; nothing was "
            "deleted. Run the command again, or run: msal-keyring-cache doctor"
        )


def move(settings: Settings, to: str) -> Moved:
    """Copy every entry into the ``to`` store (``file`` or ``keyring``), verify, then delete
    the source. Interrupted, both stores hold the tokens: run it again.

    Afterwards ``backend="auto"`` finds the tokens where they went (it prefers the file
    while the credential store holds no cache); set ``backend`` to say so for good.
    """
    if to not in ("file", "keyring"):
        raise ConfigError(f"move: expected file or keyring, not {to!r}")
    source = open_cache(settings)
    target_settings = dataclasses.replace(settings, backend=to)
    try:
        target = open_cache(target_settings)
    except CacheError:
        _close(source)
        raise
    try:
        s_where, t_where = _where(source), _where(target)
        if source.store.backend == target.store.backend and s_where == t_where:
            raise CommandError(
                f"The cache already lives in the {source.store.backend} store ({s_where})."
            )
        with ExitStack() as locks:
            locks.enter_context(_locked(source))
            locks.enter_context(_locked(target))
            doc = parse_cache(source.serialize())
            entries = count_entries(doc)
            if entries:
                target.merge(json.dumps(doc))
                verify(target_settings, doc)
            try:
                source.clear()  # only after the copy is verified
            except (StoreError, OSError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise StoreError(
                    f"The tokens were copied to the {target.store.backend} store ({t_where}) "
                    f"and verified, but deleting them from {s_where} failed: {detail} Both "
                    "stores hold them now; delete the source by hand."
                ) from None
        result = Moved(source.store.backend, s_where, target.store.backend, t_where, entries)
    finally:
        _close(source)
        _close(target)
    _check_cleared(dataclasses.replace(settings, backend=result.source), s_where)
    return result


# -- rotating the key ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rotation:
    """What :func:`rotate_key` did."""

    path: str  #: the cache file re-encrypted
    fingerprint: str  #: of the new key (or ``derived from the passphrase``)
    empty: bool  #: no cache file existed yet
    key_file: Optional[str]  #: the key file written, if any
    old_keys_kept: bool  #: whether the old keys stay in the key file (after the new one)
    next_step: str  #: what the user must do now, in plain words


def _write_key_file(path: str, keys: list[str]) -> None:
    os.close(atomic_write(path, "".join(k + "\n" for k in keys).encode("ascii")))


def rotate_key(
    settings: Settings,
    *,
    new_key: Optional[str] = None,
    new_passphrase: Optional[str] = None,
    drop_old: bool = False,
    progress: Optional[Callable[[str], None]] = None,
) -> Rotation:
    """Re-encrypt the encrypted cache file under a new key, losing nothing if interrupted.

    * A passphrase-protected file needs ``new_passphrase``.
    * A key from ``key=`` / the environment needs ``new_key`` (a Fernet key).
    * A key file (configured, or the generated one) gets ``new_key`` or a generated key in
      front; the file is re-encrypted; the old keys stay after the new one unless
      ``drop_old`` — other caches may use the same key file, and they still open.

    Each step replaces one file atomically. ``progress`` is called with each name of
    :data:`ROTATION_STEPS` as it completes (tests kill the process there, to prove an
    interruption at any step loses nothing: run the rotation again).
    """
    from .factory import generated_key_path
    from .stores.file import EncryptedFileStore

    def step(name: str) -> None:
        logger.debug("rotate-key: %s", name)
        if progress is not None:
            progress(name)

    cache = open_cache(settings)
    store = cache.store
    try:
        if not isinstance(store, EncryptedFileStore):
            raise CommandError(
                f"rotate-key re-encrypts the encrypted file, but this cache lives in the "
                f"{cache.backend_info.backend} store, which protects it itself. Use "
                "--backend file for the file."
            )
        if settings.key_in_keyring:
            raise CommandError(
                "rotate-key does not rotate a key kept in the credential store yet; "
                "move the cache (move --to file) and rotate there."
            )
        with _locked(cache):
            # Read everything with the current key: a wrong key fails before anything changes.
            before = parse_cache(cache.serialize())
            empty = not os.path.exists(store.path)
            old = store.key_source
            key_file: Optional[str] = None
            kept = False
            if settings.passphrase:
                if not new_passphrase:
                    raise ConfigError(
                        f"The cache file is protected by a passphrase: set the new one in "
                        f"{settings.env_var('new_passphrase')} (the old one stays in "
                        f"{settings.env_var('passphrase')})."
                    )
                new_pass = check_secret(new_passphrase, settings.env_var("new_passphrase"))
                new_source: crypto.KeySource = crypto.Passphrase(new_pass)
                store.rekey(new_source)
                after = f"now set {settings.env_var('passphrase')} to the new passphrase"
            else:
                if not isinstance(old, crypto.FernetKeys):
                    raise CommandError(f"rotate-key cannot rotate {old.label}.")
                if new_key is not None and not crypto.is_fernet_key(new_key):
                    raise ConfigError(
                        "The new key is not a Fernet key (32 url-safe base64-encoded bytes); "
                        "make one with: msal-keyring-cache generate-key"
                    )
                if settings.key:
                    if new_key is None:
                        raise ConfigError(
                            f"The key comes from {settings.env_var('key')}: put the new key "
                            f"in {settings.env_var('new_key')} or use --new-key-file (make "
                            "one with: msal-keyring-cache generate-key)."
                        )
                    new_source = crypto.FernetKeys((new_key,), label="the new key")
                    store.rekey(new_source)
                    after = (
                        f"now set {settings.env_var('key')} to the new key (keep the old one "
                        "after it, comma-separated, while other copies may use it)"
                    )
                else:
                    key_file = settings.key_file or generated_key_path(settings)
                    new_key = new_key or crypto.generate_key()
                    old_keys = [k for k in old.keys if k != new_key]
                    # 1. The key file gets the new key in front: the old key still decrypts.
                    _write_key_file(key_file, [new_key, *old_keys])
                    step("keys-added")
                    # 2. The cache is re-encrypted under the new key (one atomic replace).
                    new_source = old.with_keys((new_key, *old_keys))
                    store.rekey(new_source)
                    step("reencrypted")
                    # 3. Only now, and only when asked, may the old keys leave the key file.
                    kept = bool(old_keys) and not drop_old
                    if drop_old:
                        _write_key_file(key_file, [new_key])
                        new_source = old.with_keys((new_key,))
                        after = f"the key file {key_file} holds only the new key"
                    elif old_keys:
                        after = (
                            f"the key file {key_file} holds the new key first and the old "
                            f"one{'s' if len(old_keys) > 1 else ''} after it, so other caches "
                            "using this key file still open; once none needs the old key, "
                            "run rotate-key --drop-old"
                        )
                    else:
                        after = f"the key file {key_file} holds the new key"
            # Verify with the new key source alone, through a fresh store object.
            check = PersistentTokenCache(
                EncryptedFileStore(store.path, new_source, lock_timeout=settings.lock_timeout)
            )
            try:
                if not empty and parse_cache(check.serialize()) != before:
                    raise StoreError(
                        "The re-encrypted cache does not read back the same; the old key "
                        "still decrypts it. Run rotate-key again."
                    )
            finally:
                _close(check)
            step("verified")
    finally:
        _close(cache)
    fp = (
        new_source.fingerprints[0]
        if isinstance(new_source, crypto.FernetKeys)
        else "derived from the passphrase"
    )
    return Rotation(store.path, fp, empty, key_file, kept, after)


# -- what a command did, for -v ----------------------------------------------------------------


@contextmanager
def _locked(cache: PersistentTokenCache) -> Iterator[None]:
    """The store's cross-process lock, with the wait logged at DEBUG."""
    started = time.perf_counter()
    with cache.store.lock():
        logger.debug(
            "Got the lock %s after %.1f ms",
            cache.store.describe().lock_file or "(in-process)",
            (time.perf_counter() - started) * 1000,
        )
        yield


def _close(cache: PersistentTokenCache) -> None:
    """Close, logging at DEBUG what the store did in this process (counts only)."""
    stats = cache.store.stats
    logger.debug(
        "The %s store did %d full loads, %d writes (%d journal appends), %d change checks",
        cache.store.backend,
        stats.loads,
        stats.saves,
        stats.appends,
        stats.checks,
    )
    cache.close()
