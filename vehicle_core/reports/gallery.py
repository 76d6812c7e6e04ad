"""A results gallery: one self-contained HTML page of annotated thumbnails, opened from the file system.

    items = [gallery_item(document, source_bytes) for document, source_bytes in ...]
    write_gallery(items, Path("gallery.html"), title="vehicle-demo", origin="s3://bucket/results/")

Thumbnails are embedded as ``data:`` URIs and the filters are a few lines of inline JavaScript, so
the page needs no server and no network. Filters by label and status read and write the URL hash
(``gallery.html#label=sedan&status=ok``), so a filtered view can be bookmarked or opened headless.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vehicle_core.reports.visualize import draw_document, encode_image, label_colour

THUMB_SIDE = 360  # pixels on the longer side: sharp on a laptop screen, ~15 KB as JPEG


@dataclass(frozen=True)
class GalleryItem:
    """One card: the result document and its annotated thumbnail (JPEG bytes)."""

    document: dict[str, Any]
    thumbnail: bytes

    @property
    def labels(self) -> list[str]:
        """Every vehicle's label (the card matches a label filter when any vehicle has it)."""
        return sorted({v.get("label") for v in self.document.get("vehicles") or [] if v.get("label")})


def gallery_item(document: dict[str, Any], source: bytes | None, images=None) -> GalleryItem:
    """Draw ``document`` on its source image (``None``: the source is gone, a card says so)."""
    picture = draw_document(document, source, images)
    return GalleryItem(document, encode_image(picture, ".jpg", max_side=THUMB_SIDE, quality=80))


def write_gallery(items: Iterable[GalleryItem], out: Path, *, title: str = "vehicle-pipeline results",
                  origin: str = "") -> Path:
    """Write the page to ``out`` (folders created) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_gallery(list(items), title=title, origin=origin), encoding="utf-8")
    return out


def render_gallery(items: list[GalleryItem], *, title: str, origin: str = "") -> str:
    """The HTML of the page: counts and models at the top, filters, then one card per item."""
    statuses = Counter(item.document.get("status", "?") for item in items)
    labels = Counter(label for item in items for label in item.labels)
    errors = Counter((item.document.get("error") or {}).get("code") for item in items
                     if item.document.get("status") == "error")
    models = Counter(f"{role}: {info.get('name')} {info.get('version')}" for item in items
                     for role, info in sorted((item.document.get("models") or {}).items()))
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(items)} results{" from " + _e(origin) if origin else ""}, page made {made}</p>',
        '<div class="counts">',
        _count_list("status", statuses, "count-status"),
        _count_list("label (vehicles)", labels, "count-label"),
        _count_list("error code", errors, "count-error"),
        _count_list("models", models, "count-model"),
        "</div>",
        _filters(sorted(labels), sorted(statuses), len(items)),
    ]
    cards = "\n".join(_card(item) for item in items)
    return _PAGE.format(title=_e(title), style=_STYLE, head="\n".join(head), cards=cards, script=_SCRIPT)


def _count_list(name: str, counts: Counter, css: str) -> str:
    rows = "".join(f'<li><span class="k">{_e(str(k))}</span> <b>{v}</b></li>' for k, v in counts.most_common())
    return f'<section class="{css}"><h2>{_e(name)}</h2><ul>{rows or "<li>none</li>"}</ul></section>'


def _filters(labels: list[str], statuses: list[str], total: int) -> str:
    def options(values):
        return '<option value="">all</option>' + "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)

    return ('<form class="filters" onsubmit="return false">'
            f'<label>label <select id="filter-label">{options(labels)}</select></label> '
            f'<label>status <select id="filter-status">{options(statuses)}</select></label> '
            f'<span>showing <b id="shown">{total}</b> of {total}</span></form>')


def _card(item: GalleryItem) -> str:
    doc = item.document
    status = doc.get("status", "?")
    key = (doc.get("source") or {}).get("key", "?")
    src = "data:image/jpeg;base64," + base64.b64encode(item.thumbnail).decode("ascii")
    lines = [f'<div class="key" title="{_e(key)}">{_e(key)}</div>']
    if doc.get("label"):
        colour = "#{:02x}{:02x}{:02x}".format(*label_colour(doc["label"]))
        more = len(doc.get("vehicles") or []) - 1
        lines.append(f'<div><span class="swatch" style="background:{colour}"></span>'
                     f'<b>{_e(doc["label"])}</b> {float(doc.get("confidence") or 0):.2f}'
                     f'{f" (+{more} more)" if more > 0 else ""}</div>')
    lines.append(f'<div><span class="status s-{_e(status)}">{_e(status)}</span></div>')
    if status == "error":
        error = doc.get("error") or {}
        lines.append(f'<div class="error"><code>{_e(str(error.get("code")))}</code> {_e(str(error.get("message", "")))}</div>')
    return (f'<figure class="card" data-status="{_e(status)}" data-labels="{_e(" ".join(item.labels))}">'
            f'<img src="{src}" alt="{_e(key)} annotated"><figcaption>{"".join(lines)}</figcaption></figure>')


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#f6f6f4;color:#222}
h1{margin:0 0 4px;font-size:22px} h2{font-size:13px;margin:0 0 4px;color:#555;text-transform:uppercase}
.meta{color:#666;margin:0 0 10px}
.counts{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:10px}
.counts section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.counts ul{list-style:none;margin:0;padding:0} .counts li{white-space:nowrap}
.filters{margin:8px 0 12px} .filters select{margin-right:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.card{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
.card[hidden]{display:none}
.card img{width:100%;display:block;background:#333}
figcaption{padding:6px 8px;font-size:12px}
.key{font-family:monospace;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;color:#444}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.status{border-radius:3px;padding:0 5px;color:#fff;background:#777}
.s-ok{background:#2c8a3c} .s-error{background:#c0392b} .s-no_vehicle{background:#8a6d2c}
.error{color:#a02a1e;margin-top:2px}
"""

# Cards hide themselves by attribute; the hash holds the filters so a view is a URL.
_SCRIPT = """
const label = document.getElementById('filter-label'), status = document.getElementById('filter-status');
function apply() {
  let shown = 0;
  for (const card of document.querySelectorAll('.card')) {
    const ok = (!label.value || card.dataset.labels.split(' ').includes(label.value))
            && (!status.value || card.dataset.status === status.value);
    card.hidden = !ok; shown += ok;
  }
  document.getElementById('shown').textContent = shown;
}
function fromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  label.value = params.get('label') || ''; status.value = params.get('status') || '';
  apply();
}
function toHash() {
  const params = new URLSearchParams();
  if (label.value) params.set('label', label.value);
  if (status.value) params.set('status', status.value);
  history.replaceState(null, '', '#' + params.toString()); apply();
}
label.addEventListener('change', toHash); status.addEventListener('change', toHash);
window.addEventListener('hashchange', fromHash);
fromHash();
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{style}</style></head>
<body>
{head}
<main class="grid">
{cards}
</main>
<script>{script}</script>
</body></html>
"""
