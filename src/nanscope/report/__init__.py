"""Report values and their renderers (text, JSON)."""

from nanscope.report.json import dumps, loads, to_dict, write
from nanscope.report.model import SCHEMA, Cause, Detection, Evidence, FirstNonFinite, History, Report
from nanscope.report.text import print_report, render_text

__all__ = [
    "SCHEMA",
    "Cause",
    "Detection",
    "Evidence",
    "FirstNonFinite",
    "History",
    "Report",
    "dumps",
    "loads",
    "print_report",
    "render_text",
    "to_dict",
    "write",
]
