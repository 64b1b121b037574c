"""Prefect flows: thin wiring around the coopprune library (which never imports Prefect)."""
