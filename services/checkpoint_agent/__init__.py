"""Node checkpoint agent: CRIU on its node (capability probe now; migration steps with issue #5)."""
