"""The reference encoder server: any local checkpoint as an embedding API.

``app.py`` (FastAPI routes), ``keys.py`` (API keys, per-key settings, rate limits),
``defences.py`` (StolenEncoder output defences), ``faults.py`` (fault injection for tests),
``testing.py`` (start a real server on 127.0.0.1 in a background thread). Owners can deploy
it in front of their own encoder with ``encoder-audit serve-encoder``; the tests use it as
the third-party API.
"""
