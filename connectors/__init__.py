"""Connectors: each reads one kind of source and yields raw items with ids and checkpoints."""
