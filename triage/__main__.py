"""``python -m triage``: the same as the ``triage`` command."""

from __future__ import annotations

from triage.cli import main

main()
