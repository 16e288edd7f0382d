"""One small helper for the HTML pages unitscope writes: names from data are escaped (never markup),
every page has the same head."""
from __future__ import annotations

import html

TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}}
.dead{{color:#999}}</style></head><body>{body}</body></html>"""


def esc(value) -> str:
    """str(value) as HTML text (quotes included, so that it may stand in an attribute too)."""
    return html.escape(str(value), quote=True)


def page(title, body: str, style: str = "") -> str:
    """A whole page: `title` (plain text, escaped here), `body` (HTML, escaped by its writer with
    esc()), `style`: more CSS rules."""
    return TEMPLATE.format(title=esc(title), body=(f"<style>{style}</style>" if style else "") + body)
