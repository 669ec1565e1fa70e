"""Real servers on loopback for the test suite: Dovecot, aiosmtpd and PostgreSQL."""
