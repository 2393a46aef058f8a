"""CLM's policy core: pure decisions over Kubernetes-shaped data, each with reasons."""
