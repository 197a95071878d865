"""Integration tokens: the key vault (sealed private keys), token signing and verification,
and the persisted revocation and key lookups verify makes on every call."""
