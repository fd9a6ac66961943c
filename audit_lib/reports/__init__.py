"""PDF evidence reports: render a case, verify a report, sign it.

Heavy libraries (WeasyPrint, matplotlib) are imported inside the functions that need
them, so importing this package is cheap (the DAG and the CLI import it).
"""

from audit_lib.reports.case import ReportError, parse_case
from audit_lib.reports.render import render_report
from audit_lib.reports.verify import VerifyResult, verify_report

__all__ = ["ReportError", "VerifyResult", "parse_case", "render_report", "verify_report"]
