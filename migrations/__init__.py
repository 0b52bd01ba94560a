"""Alembic migrations of tabxai's schema; every schema change is a migration."""
