"""Sharing work between server processes that use one index database."""
