"""Encryption at rest: the sealed object format, master keys, the key record and rotation."""
