"""Encoder compliance auditing: identity and membership inference, ownership checks,
theft simulation, and evidence reports over pre-trained image encoders."""

__version__ = "0.1.0"
