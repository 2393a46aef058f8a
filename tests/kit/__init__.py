"""Test and benchmark helpers (never imported by services)."""
