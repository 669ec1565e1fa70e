"""Deciding where a message goes, and why: one pure function over gathered facts.

``route.py`` holds the decision as data (a disposition, its reasons, the urgency signals),
``router.py`` the one place that decides, ``urgency.py`` the signals beside the model's guess.
"""
