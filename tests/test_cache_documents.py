"""What an imported cache document must be, and how journal deltas and stored bytes parse.

``merge`` refuses anything msal could not use, ``deserialize`` keeps msal's looser contract
(shape only), ``validate_cache`` (used by ``migrate`` with ``name_keys``) names the bad entry
without quoting it, ``apply_delta`` refuses a record that is not a cache change and
``parse_json`` refuses bytes that are not strict UTF-8 JSON. Each refusal changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from msal_keyring_cache import ConfigError, CorruptCacheError, MemoryStore, PersistentTokenCache
from msal_keyring_cache.stores.base import apply_delta, parse_json, validate_cache

TOKEN = "document-secret-token-5e1f"
RT = {"credential_type": "RefreshToken", "secret": TOKEN, "home_account_id": "h"}
AT = {"credential_type": "AccessToken", "secret": TOKEN, "expires_on": "4102444800"}
ACCOUNT = {"home_account_id": "h", "environment": "e", "authority_type": "MSSTS"}
IDT = {"credential_type": "IdToken"}


def _cache_with(doc: dict[str, Any]) -> PersistentTokenCache:
    cache = PersistentTokenCache(MemoryStore())
    cache.merge(json.dumps(doc))
    return cache


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"AccessToken": [AT]}, "the 'AccessToken' section is not an object"),
        ({"RefreshToken": {"a": RT, "b": "text"}}, "RefreshToken entry 2 is not an object"),
        ({"RefreshToken": {"a": RT, "b": {**RT, "secret": 5}}}, "entry 2 has a 'secret' that"),
        ({"AccessToken": {"a": {**AT, "expires_on": None}}}, "'expires_on' that is not a whole"),
        ({"AccessToken": {"a": {**AT, "expires_on": True}}}, "'expires_on' that is not a whole"),
        ({"AccessToken": {"a": {**AT, "expires_on": 1.5}}}, "'expires_on' that is not a whole"),
        ({"AccessToken": {"a": {**AT, "expires_on": "12a"}}}, "'expires_on' that is not a whole"),
        ({"AccessToken": {"a": {"secret": TOKEN}}}, "AccessToken entry 1 has no 'expires_on'"),
        ({"Account": {"a": {**ACCOUNT, "home_account_id": 5}}}, "'home_account_id'"),
        ({"Account": {"a": {"home_account_id": "h", "environment": "e"}}}, "no 'authority_type'"),
        ({"RefreshToken": {"a": {**RT, "credential_type": "AccessToken"}}}, "not 'RefreshToken'"),
    ],
)
def test_merge_refuses_an_unusable_entry_names_it_and_imports_nothing(
    doc: dict[str, Any], says: str
) -> None:
    cache = _cache_with({"RefreshToken": {"kept": RT}})
    before = cache.serialize()
    with pytest.raises(ConfigError, match="nothing was imported") as err:
        cache.merge(
            json.dumps({"IdToken": {"new": {"credential_type": "IdToken", "secret": "x"}}, **doc})
        )
    assert says in str(err.value)
    assert TOKEN not in str(err.value)
    assert cache.serialize() == before
    assert json.loads(cache.store.load() or b"{}") == json.loads(before)


@pytest.mark.parametrize("expires_on", [4102444800, "4102444800"])
def test_merge_takes_time_fields_as_numbers_or_digit_text(expires_on: Any) -> None:
    cache = _cache_with({"AccessToken": {"a": {**AT, "expires_on": expires_on}}})
    assert json.loads(cache.serialize())["AccessToken"]["a"]["expires_on"] == expires_on


def test_deserialize_takes_partial_entries_but_not_bad_shapes() -> None:
    cache = PersistentTokenCache(MemoryStore())
    partial = {"AccessToken": {"a": {"secret": TOKEN}}}  # msal's own tests do this
    cache.deserialize(json.dumps(partial))
    assert json.loads(cache.serialize()) == partial
    with pytest.raises(ConfigError, match="AccessToken entry 1 has a 'secret' that is not text"):
        cache.deserialize(json.dumps({"AccessToken": {"a": {"secret": 5}}}))
    assert json.loads(cache.serialize()) == partial


def test_validate_cache_by_default_requires_msal_fields_and_names_positions() -> None:
    doc = {"RefreshToken": {"rt-key": {"credential_type": "RefreshToken"}}}
    with pytest.raises(ConfigError, match="RefreshToken entry 1 has no 'secret'") as err:
        validate_cache(doc)
    assert "rt-key" not in str(err.value)
    assert validate_cache({"RefreshToken": {"k": RT}}) == {"RefreshToken": {"k": RT}}


def test_validate_cache_for_migrate_names_the_bad_entry_by_a_shortened_key() -> None:
    key = "uid.utid-login.example.com-refreshtoken-client-" + "x" * 300
    with pytest.raises(ConfigError) as err:
        validate_cache({"RefreshToken": {key: {"secret": 7}}}, name_keys=True)
    message = str(err.value)
    assert "RefreshToken['uid.utid-login.example.com-refreshtoken-client-xxx" in message
    assert key not in message  # a hostile key cannot flood the message
    assert len(message) < 300


def test_apply_delta_refuses_a_record_that_is_not_a_cache_change_and_changes_nothing() -> None:
    state = {"RefreshToken": {"kept": RT}}
    for record in (
        {"AccessToken": {"a": AT}, "RefreshToken": {"b": 5}},  # an entry that is no object
        {"AccessToken": {"a": AT}, "RefreshToken": ["b"]},  # a section that is no object
    ):
        with pytest.raises(CorruptCacheError, match="not an msal cache change"):
            apply_delta(state, record)
        assert state == {"RefreshToken": {"kept": RT}}


def test_apply_delta_replaces_a_damaged_section_with_the_change() -> None:
    state: dict[str, Any] = {"RefreshToken": ["damaged"], "AccessToken": {"old": AT}}
    apply_delta(state, {"RefreshToken": {"new": RT}, "AccessToken": {"old": None}})
    assert state == {"RefreshToken": {"new": RT}, "AccessToken": {}}


@pytest.mark.parametrize(
    "data",
    [
        b'{"RefreshToken": {"k": {"secret": "\xed\xa0\x80"}}}',  # a lone surrogate
        '{"RefreshToken": {}}'.encode("utf-16"),  # JSON, but not UTF-8
        b'{"a": "\xff"}',
    ],
)
def test_parse_json_refuses_bytes_that_are_not_strict_utf8(data: bytes) -> None:
    with pytest.raises(CorruptCacheError, match="the stored cache is not valid JSON"):
        parse_json(data, "the stored cache")


def test_parse_json_takes_text_and_utf8_bytes_alike() -> None:
    doc = {"AppMetadata": {"k": {"environment": "ü.example"}}}
    text = json.dumps(doc, ensure_ascii=False)
    assert parse_json(text, "x") == doc
    assert parse_json(text.encode(), "x") == doc
