"""The reviewer's view of runs/: one entry per notebook run (``churnkit runs``) and the HTML index.

Modules: ``runs`` (entries from MLflow and the runs folder, the text table), ``html`` (rendered
notebooks and the static index page of ``churnkit report``).
"""

from churnkit.audit.html import render_notebook, write_report
from churnkit.audit.runs import ENTRY_KEYS, FAILED, RUN_KEYS, collect, format_table, list_runs, production_lines

__all__ = ["ENTRY_KEYS", "FAILED", "RUN_KEYS", "collect", "format_table", "list_runs", "production_lines",
           "render_notebook", "write_report"]
