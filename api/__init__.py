"""The scoring service (FastAPI)."""
