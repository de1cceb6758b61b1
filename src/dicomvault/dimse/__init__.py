"""DIMSE services: the SCP handlers and the association server."""
