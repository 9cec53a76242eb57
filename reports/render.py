"""Small HTML building blocks for a single self-contained report: tables, embedded images, figures."""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from echosynth.gen.core.io import write_text  # atomic write helper (no training code)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:40px;border-bottom:2px solid #dde3ea;padding-bottom:6px}
h3{margin-top:24px;font-size:17px} nav{margin:12px 0 0;font-size:14px} nav a{margin-right:14px;color:#2457a6}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px;background:#fff}
th,td{border:1px solid #d5dbe3;padding:4px 8px;text-align:right} th{background:#eef2f7}
td:first-child,th:first-child{text-align:left}
.caption{font-size:13px;color:#4a5566;margin:2px 0 10px} .absent{color:#8a6d1f;background:#fff8e1;
padding:8px 12px;border-left:4px solid #e0b000;font-size:14px}
.findings li{margin:6px 0;line-height:1.45} figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}
figure img{border:1px solid #d5dbe3;background:#fff;max-width:100%;image-rendering:pixelated} figcaption{font-size:12px;color:#4a5566}
.sub{color:#4a5566;font-size:14px} pre{background:#f0f3f7;padding:8px;overflow-x:auto;font-size:12px}
.best{font-weight:600;background:#e8f4ea}
.gate-fail{background:#fdecea;border:2px solid #c62828;border-left-width:8px;padding:10px 16px;margin:8px 0 16px;
font-size:15px} .gate-pass{background:#e8f4ea;border:2px solid #2e7d32;border-left-width:8px;padding:10px 16px;
margin:8px 0 16px;font-size:15px} li.unusable{color:#7a1f1f} .dir-reproduced{color:#2e7d32;font-weight:600}
.dir-not-reproduced{color:#b26a00;font-weight:600} .dir-not-testable,.dir-not-run{color:#c62828;font-weight:600}
figcaption{font-size:14px}
"""


def esc(x: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(x))


def fmt(x: Any, digits: int = 4) -> str:
    """A number to `digits` decimals, '–' for None."""
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return str(x)


def mean_sd(mean: float | None, sd: float | None, n: int, digits: int = 4) -> str:
    """'0.9307 ± 0.0120' (sd only with more than one seed)."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if n > 1 and sd is not None else f"{mean:.{digits}f}"


@dataclass
class Table:
    """A titled table that renders as HTML and writes as CSV and Markdown."""

    name: str  # file stem for CSV
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    caption: str = ""
    highlight: set[tuple[int, int]] = field(default_factory=set)  # (row, col) cells in bold

    def cell(self, x: Any) -> str:
        return fmt(x) if not isinstance(x, str) else x

    def to_html(self) -> str:
        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = []
        for i, row in enumerate(self.rows):
            tds = "".join(f"<td{' class=best' if (i, j) in self.highlight else ''}>{esc(self.cell(x))}</td>"
                          for j, x in enumerate(row))
            body.append(f"<tr>{tds}</tr>")
        cap = f"<div class=caption>{esc(self.caption)}</div>" if self.caption else ""
        return f"<h3>{esc(self.title)}</h3>{cap}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(self.cell(x) for x in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.columns)
        for row in self.rows:
            w.writerow(["" if x is None else x for x in row])

        write_text(path, buf.getvalue())


def png_data_uri(data: bytes) -> str:
    """data: URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img_tag(data: bytes, caption: str = "", width: int | None = None, alt: str = "") -> str:
    """An embedded <figure> of PNG bytes."""
    w = f' width="{width}"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(data)}"{w} alt="{esc(alt or caption)}">{cap}</figure>'


def img_file(path: Path, caption: str = "", width: int | None = None) -> str:
    """An embedded <figure> of a PNG file, or '' if it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ""
    if not data.startswith(b"\x89PNG"):
        return ""
    return img_tag(data, caption, width)


def array_png(image: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of a uint8 (H,W) array, upscaled by an integer factor (nearest) for visibility."""
    from PIL import Image

    im = Image.fromarray(image)
    if scale > 1:
        im = im.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def fig_png(fig) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def absent(what: str, why: str) -> str:
    """The notice a section shows when its inputs are missing."""
    return f"<p class=absent><b>{esc(what)}:</b> {esc(why)}</p>"


def section(anchor: str, title: str, body: str) -> str:
    """An <h2> section with an anchor."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str) -> str:
    """The whole HTML document (inline CSS, no external resources)."""
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    # Lets a headless browser (tests) report images that failed to decode: <body data-broken-images=N>.
    check = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.dataset.images=i.length;"
             "document.body.dataset.brokenImages=i.filter(x=>!(x.complete&&x.naturalWidth>0)).length;});</script>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head>"
            f"<body><main><h1>{esc(title)}</h1><div class=sub>{esc(subtitle)}</div><nav>{links}</nav>"
            f"{body}</main>{check}</body></html>\n")
