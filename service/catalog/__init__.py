"""Datasets and models: one upload path for both, their catalogue rows and endpoints."""
