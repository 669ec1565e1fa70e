"""Delivery: the outbox and what goes out of it.

``outbox`` delivers queued forwards (at least once, a fixed Message-ID each), ``compose`` writes
the mail a department reads, ``transports`` hands it to SMTP or a folder, and ``alerts`` tells
the admin when something needs attention.
"""
