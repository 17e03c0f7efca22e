"""The public test kit: LoopbackIdentityProvider and the ``loopback_idp`` pytest fixture."""

from __future__ import annotations

import subprocess
import warnings
from typing import Any

import msal
import pytest

from msal_keyring_cache.testing import LoopbackIdentityProvider, RecordedRequest
from tests.helpers import PYTHON, ROOT, child_env

pytest_plugins = ["pytester"]

SCOPES = ["User.Read"]


def sign_in(app: Any, username: str = "alice@example.com") -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result: dict[str, Any] = app.acquire_token_by_username_password(username, "pw", SCOPES)
    return result


def test_request_log_and_counts() -> None:
    with LoopbackIdentityProvider() as idp:
        app = idp.public_app(token_cache=msal.TokenCache())
        result = sign_in(app)
        assert "access_token" in result
        assert idp.token_requests == 1
        [token] = [r for r in idp.requests if r.path.endswith("/token")]
        assert token == RecordedRequest(
            "POST",
            "/loopback-tenant/oauth2/v2.0/token",
            200,
            grant_type="password",
            client_id=app.client_id,
            scope=token.scope,
            username="alice@example.com",
        )
        # the log never holds a token, and issued tokens are all recorded
        assert result["access_token"] in idp.issued
        assert result["refresh_token"] in idp.issued
        logged = repr(idp.requests)
        assert all(value not in logged for value in idp.issued)
        idp.reset()
        assert idp.requests == []


def test_token_lifetime_and_refresh() -> None:
    # msal refreshes an access token that expires within five minutes: no sleeping needed
    with LoopbackIdentityProvider(access_token_lifetime=60) as idp:
        app = idp.public_app(token_cache=msal.TokenCache())
        sign_in(app)
        [account] = app.get_accounts()
        idp.reset()
        result = app.acquire_token_silent(SCOPES, account=account)
        assert result is not None
        assert "access_token" in result
        assert [r.grant_type for r in idp.requests if r.grant_type] == ["refresh_token"]


def test_fail_next_invalid_grant_and_throttle() -> None:
    with LoopbackIdentityProvider() as idp:
        cache = msal.TokenCache()
        sign_in(idp.public_app(token_cache=cache))
        # msal remembers a 429 per app (its throttling cache): one app per injected failure
        app = idp.public_app(token_cache=cache)
        [account] = app.get_accounts()
        idp.throttle_next(retry_after=7)
        throttled = app.acquire_token_silent_with_error(SCOPES, account=account, force_refresh=True)
        assert throttled is not None
        assert "error" in throttled
        app = idp.public_app(token_cache=cache)
        idp.fail_next("invalid_grant")
        failed = app.acquire_token_silent_with_error(SCOPES, account=account, force_refresh=True)
        assert failed is not None
        assert failed["error"] == "invalid_grant"
        assert [r.status for r in idp.requests if r.grant_type == "refresh_token"] == [429, 400]


def test_password_check_and_client_credentials() -> None:
    with LoopbackIdentityProvider(password="right") as idp:
        app = idp.public_app(token_cache=msal.TokenCache())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            bad = app.acquire_token_by_username_password("a@example.com", "wrong", SCOPES)
        assert bad["error"] == "invalid_grant"
        daemon = idp.confidential_app(token_cache=msal.TokenCache())
        result = daemon.acquire_token_for_client(["https://graph.microsoft.com/.default"])
        assert "access_token" in result


def test_another_process_reaches_the_provider() -> None:
    with LoopbackIdentityProvider() as idp:
        code = (
            "import sys, msal\n"
            "from msal_keyring_cache.testing import loopback_http_client, DEFAULT_CLIENT_ID\n"
            "app = msal.ConfidentialClientApplication(DEFAULT_CLIENT_ID, client_credential='s',"
            " authority='https://127.0.0.1/loopback-tenant', instance_discovery=False,"
            " http_client=loopback_http_client(int(sys.argv[1])))\n"
            "r = app.acquire_token_for_client(['api://x/.default'])\n"
            "sys.exit(0 if 'access_token' in r else 1)\n"
        )
        proc = subprocess.run(
            [PYTHON, "-c", code, str(idp.port)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert idp.token_requests == 1


def test_loopback_idp_fixture_via_entry_point(pytester: pytest.Pytester) -> None:
    # The fixture comes from the pytest11 entry point of the installed package: the
    # user's test file imports nothing from the plugin.
    pytester.makepyfile(
        """
        import msal

        def test_my_cli_signs_in_once(loopback_idp):
            app = loopback_idp.public_app(token_cache=msal.TokenCache())
            flow = app.initiate_device_flow(["User.Read"])
            token = app.acquire_token_by_device_flow(flow)
            assert "access_token" in token
            assert loopback_idp.token_requests == 1

        def test_log_is_cleared_per_test(loopback_idp):
            assert loopback_idp.requests == []
            loopback_idp.fail_next("invalid_grant")
            app = loopback_idp.confidential_app(token_cache=msal.TokenCache())
            assert app.acquire_token_for_client(["api://x/.default"])["error"] == "invalid_grant"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_docs_pytest_example_passes(pytester: pytest.Pytester) -> None:
    text = (ROOT / "docs" / "cli-kit.md").read_text()
    [block] = [b for b in text.split("```python\n")[1:] if "def test_second_run" in b]
    pytester.makepyfile(test_from_docs=block.split("```")[0])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
