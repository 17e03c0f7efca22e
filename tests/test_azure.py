"""Real azure-identity credentials keep both their caches in our store.

azure-identity's own HTTP pipeline reaches the loopback identity provider through an
azure-core ``RequestsTransport`` over the test kit's loopback session. The first process
signs in; a new process gets its tokens with 0 token requests.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import ConfigError
from msal_keyring_cache.azure import TESTED, check_version, credential_kwargs
from msal_keyring_cache.testing import LoopbackIdentityProvider

from .helpers import PYTHON, child_env, require

try:
    import azure.identity  # noqa: F401

    HAVE_AZURE_IDENTITY = True
except ImportError:  # pragma: no cover - the test extra installs it
    HAVE_AZURE_IDENTITY = False


@pytest.fixture(autouse=True)
def _azure_identity() -> None:
    require(HAVE_AZURE_IDENTITY, "azure-identity is not installed (the test extra brings it)")


_PROCESS = textwrap.dedent(
    """
    import json, sys, warnings
    from azure.core.pipeline.transport import RequestsTransport
    from azure.identity import (AuthenticationRecord, ClientSecretCredential,
                                DeviceCodeCredential)
    from msal_keyring_cache.azure import credential_kwargs
    from msal_keyring_cache.testing import loopback_http_client

    port, kind, cae, record = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "cae", sys.argv[4]
    common = dict(
        authority="https://127.0.0.1", tenant_id="loopback-tenant",
        disable_instance_discovery=True,
        transport=RequestsTransport(session=loopback_http_client(port)),
        **credential_kwargs("azure-test"),
    )
    client_id = "00000000-0000-0000-0000-00000000c11d"
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if kind == "secret":
            credential = ClientSecretCredential(client_secret="s", client_id=client_id, **common)
            scope = "api://t/.default"
        else:
            if record:
                common["authentication_record"] = AuthenticationRecord.deserialize(record)
                del common["authority"]  # the record names it
            credential = DeviceCodeCredential(
                client_id, prompt_callback=lambda *args: None, **common)
            scope = "User.Read"
            if not record:
                out["record"] = credential.authenticate(scopes=[scope]).serialize()
        token = credential.get_token(scope, enable_cae=cae)
    out["token"] = token.token
    print(json.dumps(out))
    """
)


def run(idp: LoopbackIdentityProvider, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [PYTHON, "-c", _PROCESS, str(idp.port), *args],
        env=child_env(**env), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def env(tmp_path: Path, key: str) -> dict[str, str]:
    return {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "azure" / "token_cache.bin"),
        "MSAL_KEYRING_CACHE_KEY": key,
    }


@pytest.mark.parametrize("cae", ["cae", "regular"])
def test_client_secret_credential_second_process_makes_no_token_request(
    idp: LoopbackIdentityProvider, env: dict[str, str], cae: str
) -> None:
    idp.reset()
    first = run(idp, env, "secret", cae, "")
    assert idp.token_requests == 1
    idp.reset()
    second = run(idp, env, "secret", cae, "")
    assert idp.token_requests == 0
    assert second["token"] == first["token"]
    regular = Path(env["MSAL_KEYRING_CACHE_PATH"])
    written = regular.with_name("token_cache.cae.bin") if cae == "cae" else regular
    other = regular if cae == "cae" else regular.with_name("token_cache.cae.bin")
    assert written.exists()
    assert not other.exists()  # the two caches live apart
    assert first["token"].encode() not in written.read_bytes()  # encrypted


def test_device_code_credential_second_process_is_silent_in_both_caches(
    idp: LoopbackIdentityProvider, env: dict[str, str]
) -> None:
    idp.reset()
    first = run(idp, env, "user", "regular", "")
    assert idp.token_requests >= 1
    idp.reset()
    again = run(idp, env, "user", "regular", first["record"])
    assert idp.token_requests == 0
    assert again["token"] == first["token"]

    idp.reset()
    cae_first = run(idp, env, "user", "cae", first["record"])  # the CAE cache is empty
    assert idp.token_requests == 1
    assert cae_first["token"] != first["token"]  # a CAE token never answers a regular request
    idp.reset()
    cae_again = run(idp, env, "user", "cae", first["record"])
    assert idp.token_requests == 0
    assert cae_again["token"] == cae_first["token"]


def test_both_caches_live_apart_in_our_store(tmp_path: Path, key: str) -> None:
    kwargs = credential_kwargs("azure-test", backend="file", path=str(tmp_path / "c.bin"), key=key)
    assert set(kwargs) == {"_cache", "_cae_cache"}
    regular, cae = kwargs["_cache"].store, kwargs["_cae_cache"].store
    assert regular.path == str(tmp_path / "c.bin")  # type: ignore[attr-defined]
    assert cae.path == str(tmp_path / "c.cae.bin")  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", ["1.15.0", "1.28.0", "2.0.0", "garbage", ""])
def test_untested_azure_identity_versions_are_refused_clearly(version: str) -> None:
    with pytest.raises(ConfigError, match=r"tested with 1\.16\.0 up to") as caught:
        check_version(version)
    assert "_cache/_cae_cache" in str(caught.value)


def test_the_installed_version_is_in_the_tested_range() -> None:
    from importlib.metadata import version

    assert check_version() == version("azure-identity")
    assert TESTED[0] <= tuple(int(n) for n in version("azure-identity").split(".")[:3])


def _our_caches(credential: Any) -> set[int]:
    """The PersistentTokenCache objects a credential holds (two levels deep)."""
    from msal_keyring_cache import PersistentTokenCache

    found: set[int] = set()
    for value in vars(credential).values():
        if isinstance(value, PersistentTokenCache):
            found.add(id(value))
        elif hasattr(value, "__dict__"):
            found |= {id(v) for v in vars(value).values() if isinstance(v, PersistentTokenCache)}
    return found


@pytest.mark.parametrize(
    ("name", "args", "extra"),
    [
        ("ClientSecretCredential", ("t", "c", "s"), {}),
        ("DeviceCodeCredential", ("c",), {}),
        ("InteractiveBrowserCredential", (), {}),
        ("UsernamePasswordCredential", ("c", "u", "p"), {}),
        ("OnBehalfOfCredential", ("t", "c"), {"client_secret": "s", "user_assertion": "a"}),
        ("SharedTokenCacheCredential", (), {}),
        ("CertificateCredential", ("t", "c"), {"certificate_data": "PEM"}),
    ],
)
def test_every_msal_based_credential_takes_both_caches(
    name: str, args: tuple[str, ...], extra: dict[str, str], tmp_path: Path, key: str
) -> None:
    import warnings

    import azure.identity

    kwargs = credential_kwargs("azure-test", backend="file", path=str(tmp_path / "c.bin"), key=key)
    if extra.get("certificate_data") == "PEM":
        extra = {"certificate_data": _self_signed_pem()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        credential = getattr(azure.identity, name)(*args, **extra, **kwargs)
    assert _our_caches(credential) == {id(kwargs["_cache"]), id(kwargs["_cae_cache"])}


@pytest.mark.secret_service
def test_the_cae_cache_has_its_own_credential_store_entry(use_secret_service: Any) -> None:
    kwargs = credential_kwargs("azure-test-keyring", backend="keyring")
    regular, cae = kwargs["_cache"].store, kwargs["_cae_cache"].store
    assert regular.backend == cae.backend == "keyring"
    assert (regular.service, regular.account) == ("azure-test-keyring", "token-cache")  # type: ignore[attr-defined]
    assert (cae.service, cae.account) == ("azure-test-keyring", "token-cache.cae")  # type: ignore[attr-defined]
    assert regular.lock().path != cae.lock().path  # type: ignore[attr-defined]


def _self_signed_pem() -> bytes:
    """A throwaway private key and self-signed certificate, PEM (CertificateCredential)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)
