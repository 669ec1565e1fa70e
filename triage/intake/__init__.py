"""Intake: from a source's raw items to stored, routed messages.

``sources`` builds the connectors, ``pipeline`` polls one source batch by batch, ``prepare``
parses (``normalize``, ``posts``) and classifies batches in worker processes, and each batch is
recorded by its source's stage: ``customer`` for customers' requests, ``corrections`` for the
departments' replies. ``results`` holds what a poll reports.
"""
