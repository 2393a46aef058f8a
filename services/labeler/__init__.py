"""Labeler: keeps live.cast.ai/migration-enabled true to the rules (node capabilities now; Kubernetes with issue #8)."""
