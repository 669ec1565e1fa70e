"""The model's life: ``registry`` (versions on disk, the active one in the store), ``labels``
(human labels next to the model's guesses), ``curation`` (export and import of labels), and
retraining with its quality gate.
"""
