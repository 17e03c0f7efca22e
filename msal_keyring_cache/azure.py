"""azure-identity credentials that keep their tokens in this library's store.

::

    from azure.identity import DeviceCodeCredential
    from msal_keyring_cache.azure import credential_kwargs

    credential = DeviceCodeCredential(client_id=CLIENT_ID, **credential_kwargs("my-tool"))

azure-identity's MSAL-based credentials (``ClientSecretCredential``,
``CertificateCredential``, ``DeviceCodeCredential``, ``InteractiveBrowserCredential``,
``UsernamePasswordCredential``, ``SharedTokenCacheCredential``, ``OnBehalfOfCredential``,
…) keep two msal caches: one for regular tokens and one for CAE tokens (``enable_cae``:
long-lived tokens the service can revoke, which must not answer a regular request). They
accept caches of their own only through the private keyword arguments ``_cache`` and
``_cae_cache``, so this module checks the installed azure-identity against the versions
it was tested with and refuses others with a clear message.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Optional

from .cache import PersistentTokenCache
from .config import DEFAULT_ENV_PREFIX, Settings
from .errors import ConfigError
from .factory import build_store, default_path

__all__ = ["TESTED", "check_version", "credential_kwargs"]

#: azure-identity versions whose ``_cache``/``_cae_cache`` handling was read and tested:
#: from the first to hold a separate CAE cache up to (not including) the next minor release.
TESTED = ((1, 16, 0), (1, 28, 0))


def credential_kwargs(
    name: str, *, env_prefix: str = DEFAULT_ENV_PREFIX, **settings: Any
) -> dict[str, PersistentTokenCache]:
    """Keyword arguments for an azure-identity credential: both its caches in our store.

    ``name`` is the application name (as for :func:`~msal_keyring_cache.build_cache`);
    ``settings`` are :class:`~msal_keyring_cache.Settings` fields, over
    ``<env_prefix>_*`` variables. The CAE cache is kept apart from the regular one: the
    keyring account gets ``.cae`` appended, the file name ``.cae`` before its extension.
    Raises :class:`~msal_keyring_cache.ConfigError` when the installed azure-identity is
    outside :data:`TESTED`.
    """
    check_version()
    regular = Settings.resolve(env_prefix, app_name=name, **settings)
    root, ext = os.path.splitext(regular.path or default_path(regular.app_name))
    cae = dataclasses.replace(
        regular, path=f"{root}.cae{ext}", keyring_account=f"{regular.keyring_account}.cae"
    )
    caches = {}
    for argument, resolved in (("_cache", regular), ("_cae_cache", cae)):
        store, info = build_store(resolved, env_prefix=env_prefix)
        caches[argument] = PersistentTokenCache(store, backend_info=info)
    return caches


def check_version(installed: Optional[str] = None) -> str:
    """The installed azure-identity version; :class:`ConfigError` outside :data:`TESTED`."""
    if installed is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("azure-identity")
        except PackageNotFoundError:
            raise ConfigError(
                "credential_kwargs() is for azure-identity credentials, but azure-identity is "
                "not installed: pip install azure-identity"
            ) from None
    low, high = TESTED
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", installed)
    numbers = tuple(int(n) for n in found.groups()) if found else ()
    if not numbers or not low <= numbers < high:
        raise ConfigError(
            f"azure-identity {installed} is installed, but credential_kwargs() was tested "
            f"with {_dotted(low)} up to (not including) {_dotted(high)}: it passes the caches "
            "through azure-identity's private _cache/_cae_cache arguments, which other "
            f"versions may ignore or reject. Install a tested version (pip install "
            f"'azure-identity>={_dotted(low)},<{_dotted(high)}') or a msal-keyring-cache "
            "release that supports yours."
        )
    return installed


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
