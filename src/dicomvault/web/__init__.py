"""The HTTP side of the archive: FastAPI application and the server thread that runs it."""
