"""Routes of the administration REST API."""
