"""The audit methods, one paper per module.

Each method is a pure function over an encoder handle (``audit_lib.encoders.base``) and
returns a calibrated :class:`audit_lib.findings.FindingResult`; it never touches the
database or HTTP itself. The caller stores the finding (``audit_lib.evidence``).
"""


class MethodInputError(ValueError):
    """Input a method cannot honestly work on (too few images, a model version that
    changed mid-run, a missing classifier); the message names the problem."""
