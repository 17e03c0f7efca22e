"""The web core (msal_keyring_cache.web.core) on a real SQLite file: what one app sees."""
