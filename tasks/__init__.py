"""Prefect tasks: thin wiring around the coopprune library (which never imports Prefect)."""
