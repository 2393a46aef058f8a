"""CNI IP-handover agent: moves a pod's IP between nodes (NATS wiring now; backends with issue #6)."""
