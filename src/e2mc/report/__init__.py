"""Reports: Markdown and self-contained HTML with PNG plots (see :func:`write_report`)."""

from e2mc.report.html import write_report

__all__ = ["write_report"]
