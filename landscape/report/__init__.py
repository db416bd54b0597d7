"""``landscape report``: one self-contained HTML file from run directories and experiment summaries
(:mod:`landscape.report.page`), and ``landscape claims``' Markdown tables (:mod:`landscape.report.markdown`).
Figures: :mod:`landscape.report.figures` (the shared ones; each experiment draws its own single-use
panels); where each answer holds: :mod:`landscape.report.holds`."""

from landscape.report.markdown import claims_markdown, number_text
from landscape.report.page import build_report

__all__ = ["build_report", "claims_markdown", "number_text"]
