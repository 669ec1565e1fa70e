"""The worker process: ``scheduler`` (the jobs, ``run_once`` and the daemon), ``stopping``
(SIGTERM/SIGINT at any moment), ``notify`` (systemd).
"""
