"""What an operator reads, all from the store (``triage.store.queries``): ``status`` (also
behind /healthz), ``metrics`` (/metrics), ``dashboard`` (the status page), ``reports`` (the
CLI's tables and ``stats``), served by ``web``. Nothing here builds the write path.
"""
