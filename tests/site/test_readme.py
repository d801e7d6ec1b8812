"""The README (and docs/) point only at files that exist in the repository."""

import re

import pytest

from devtools.processes import ROOT

DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
# A backticked repository path: `docs/metrics.md`, `demo_agent/`, `tests/site/test_readme_tour.py`.
PATH_IN_CODE = re.compile(r"`((?:\.?[\w-]+/)+(?:[\w.-]+)?|[\w.-]+\.(?:md|py|yml|yaml|toml|json))`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def references(text: str) -> set[str]:
    refs = {m for m in PATH_IN_CODE.findall(text) if not m.startswith(("/", "."))}
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        refs.add(target.split("#", 1)[0])
    return refs


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_file_a_document_points_to_exists(document):
    path = ROOT / document
    missing = sorted(ref for ref in references(path.read_text()) if not (path.parent / ref).exists()
                     and not (ROOT / ref).exists())
    assert missing == [], f"{document} points to missing files: {missing}"


def test_the_checker_sees_links_and_paths():
    found = references("see [the docs](docs/metrics.md#x), `demo_agent/`, `CONTRACT.md`, `/api/v1/nodes`, <https://x>")
    assert found == {"docs/metrics.md", "demo_agent/", "CONTRACT.md"}
