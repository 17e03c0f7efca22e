"""PersistentTokenCache at its edges, through its public API and a real encrypted file."""
