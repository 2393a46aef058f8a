"""Migration coordinator: owns every Migration (agent answers now; state machine with issue #7)."""
