"""The ``triage`` command: the admin's interface to the worker, the store and the models.

Exit codes scripts can rely on: 0 success; 1 the work ran but something failed (a source could
not be polled, a forward failed); 2 bad usage or an invalid config; 3 the database cannot be
opened; 4 no usable model; 130 interrupted, or a confirmation declined.

`triage status` is made for monitoring: 0 all is well; 1 something needs attention (a source
without a successful poll within [alerts] stale_after_minutes, a source with at least
[alerts] after_failures failed polls in a row, forwards that failed for good, no usable active
model), each problem named in one line (``problems`` with --json); 2 an invalid config; 3 the
database cannot be opened.
"""

from __future__ import annotations

from triage.cli import learning, operate, worker
from triage.cli.app import cli, main

__all__ = ["cli", "learning", "main", "operate", "worker"]
