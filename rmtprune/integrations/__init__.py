"""Adapters of the Python API to training frameworks; each is an optional extra.

* :mod:`rmtprune.integrations.lightning`: the ``RMTPruning`` callback for PyTorch Lightning
  (``pip install -e ".[lightning]"`` in a checkout).
"""
