"""The audit methods, one paper per module.

Each method is a pure function over an encoder handle (``audit_lib.encoders.base``) and
returns a calibrated :class:`audit_lib.findings.FindingResult`; it never touches the
database or HTTP itself. The caller stores the finding (``audit_lib.evidence``). Each module
ends by registering its :class:`audit_lib.method_registry.MethodSpec`, through which the
pipelines, the CLI, reports and the web app find it (``docs/methods.md``).
"""


class MethodInputError(ValueError):
    """Input a method cannot honestly work on (too few images, a model version that
    changed mid-run, a missing classifier); the message names the problem."""
