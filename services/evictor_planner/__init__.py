"""Evictor-planner: bin-packs nodes and starts migrations (migration outcomes now; planning with issue #8)."""
