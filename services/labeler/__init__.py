"""Labeler: keeps live.cast.ai/migration-enabled true to the rules.

Node capabilities now; watching and labeling Kubernetes objects with issue #8.
"""
