"""The validation report: tables (also written as CSV) and figures in one self-contained HTML file.

Why HTML and not Markdown: a single ``report.html`` carries its figures inside it (PNG as base64
``data:`` URIs), so it can be mailed, archived beside a run or opened from a notebook without the
folder around it. The same PNGs and every table as CSV stay in the output folder for papers and
further analysis.

Typical use (what ``assess`` and ``evaluate`` do)::

    rep = Report("Scanner variability", out_dir)
    rep.heading("Table 2")
    rep.paragraph("Mean SSIM and NRMSE of corresponding slices ...")
    rep.table(df, "table2_ssim_nrmse", caption="Table 2 ...")      # writes out_dir/table2_ssim_nrmse.csv
    rep.figure(out_dir / "figures" / "fig7_histograms.png", caption="Fig. 7 ...")
    rep.write()                                                    # out_dir/report.html
"""
from __future__ import annotations

import base64
import datetime
import html
import math
import numbers
from pathlib import Path

from harmonize import __version__
from harmonize._fs import atomic_path

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table.data { border-collapse: collapse; margin: .6em 0 1.4em 0; font-size: 0.88em; }
table.data th, table.data td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.data th { background: #f2f2f2; }
table.data td:first-child, table.data th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
figure { margin: 1em 0 2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; }
.guide { background: #eef5fb; border-left: 4px solid #3a7bd5; padding: .5em .8em; }
.small { font-size: 0.85em; color: #555; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def format_number(value, digits=3):
    """Printable number: ``digits`` significant decimals, '-' for NaN/None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return "-"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == int(f) and abs(f) >= 1:
        return f"{int(f)}"
    if abs(f) >= 100:
        return f"{f:.1f}"
    return f"{f:.{digits}f}"


class Report:
    """Collects headings, text, tables and figures; :meth:`write` produces ``report.html``.

    Parameters
    ----------
    title : str
        Page title.
    out_dir : str or Path
        Folder of the report; tables are written there as CSV when added.
    """

    def __init__(self, title, out_dir):
        self.title = title
        self.out_dir = Path(out_dir)
        self.parts = []
        self.tables = {}
        self.figures = []

    # ---- content
    def heading(self, text, level=2):
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text, cls=None):
        """A paragraph of plain text (escaped)."""
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")

    def note(self, text):
        """A highlighted remark (deviations from the thesis, missing data, fallbacks)."""
        self.paragraph(text, cls="note")

    def bullets(self, items, cls=None):
        attr = f' class="{cls}"' if cls else ""
        lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
        self.parts.append(f"<ul{attr}>{lis}</ul>")

    def guide(self, items):
        """The reading guide: a list of ``(title, explanation)``."""
        lis = "".join(f"<li><b>{html.escape(t)}</b>: {html.escape(e)}</li>" for t, e in items)
        self.parts.append(f'<div class="guide"><ul>{lis}</ul></div>')

    def table(self, df, name, caption="", digits=3, index=False, csv=True):
        """Add a DataFrame as an HTML table and write it to ``out_dir/<name>.csv`` (full precision).

        Returns the CSV path (or None when ``csv`` is False).
        """
        path = None
        if csv:
            path = write_csv(df, self.out_dir / f"{name}.csv", index=index)
            self.tables[name] = path
        self.parts.append(_table_html(df, caption, digits, index, csv_name=path.name if path else None))
        return path

    def figure(self, path, caption=""):
        """Embed a PNG (as base64, the report stays self-contained)."""
        path = Path(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.figures.append(path)
        self.parts.append(
            f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"/>'
            f"<figcaption>{html.escape(caption)} <span class='small'>({html.escape(path.name)})</span>"
            "</figcaption></figure>")

    def raw(self, html_text):
        """Add trusted HTML (built by this package, never from user input)."""
        self.parts.append(html_text)

    # ---- output
    def html(self):
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>\n"
                f"<h1>{html.escape(self.title)}</h1>\n"
                f"<p class='small'>harmonize {__version__}, written {stamp}. Tables are also in this folder as CSV.</p>\n"
                f"{body}\n</body></html>\n")

    def write(self, name="report.html"):
        """Write the report atomically; returns its path."""
        path = self.out_dir / name
        with atomic_path(path) as tmp:
            tmp.write_text(self.html(), encoding="utf-8")
        return path


def write_csv(df, path, index=False):
    """Write a DataFrame as CSV atomically (full precision); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)
    return path


def _table_html(df, caption, digits, index, csv_name=None):
    cols = list(df.columns)
    head = ""
    if index:
        head += f"<th>{html.escape(str(df.index.name or ''))}</th>"
    head += "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    rows = []
    for idx, row in df.iterrows():
        cells = f"<td>{html.escape(str(idx))}</td>" if index else ""
        cells += "".join(f"<td>{html.escape(format_number(row[c], digits))}</td>" for c in cols)
        rows.append(f"<tr>{cells}</tr>")
    cap = html.escape(caption)
    if csv_name:
        cap += f" <span class='small'>[{html.escape(csv_name)}]</span>"
    return (f"<table class='data'><caption>{cap}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")
