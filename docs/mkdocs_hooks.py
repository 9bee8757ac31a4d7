"""mkdocs hooks for this site (see ``hooks:`` in mkdocs.yml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Pages written separately from the rest: listed in the nav (after the page named)
# only once they exist, so that the strict build passes with or without them.
OPTIONAL_PAGES = [("Guide", "Performance", {"Reliability": "reliability.md"})]


def on_config(config: Any) -> Any:
    docs = Path(config["docs_dir"])
    for section, after, entry in OPTIONAL_PAGES:
        if not (docs / next(iter(entry.values()))).exists():
            continue
        for item in config["nav"]:
            if section in item:
                pages = item[section]
                names = [next(iter(page)) for page in pages]
                pages.insert(names.index(after) + 1 if after in names else len(pages), entry)
    return config
