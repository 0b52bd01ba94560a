"""tabxai's web service: the only package that knows HTTP, SQL and settings."""
