"""The README and docs/ say what the repository holds: their links lead to files in it,
their anchors to headings, and the job params they show are accepted as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.config import Settings
from service.startup import method_registry

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)}


def test_the_api_contract_is_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/api.md)" in readme
    contract = (ROOT / "docs" / "api.md").read_text()
    for section in ("## Datasets", "## Models", "## Jobs", "## Results", "## Additions"):
        assert section in contract


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(document: Path) -> None:
    text = document.read_text()
    links = LINK.findall(text)
    for link in links:
        if re.match(r"^[a-z]+:", link):  # a web address: not a file of this repository
            continue
        path, _, anchor = link.partition("#")
        target = (document.parent / path).resolve() if path else document
        assert target.is_relative_to(ROOT), f"{link} leaves the repository"
        assert target.exists(), f"{document.name} links {link}, which is not in the repository"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target.read_text()), f"{link}: no such heading"


def test_job_params_in_the_readme_are_accepted() -> None:
    """Every `params:='{…}'` example validates against its kind's params."""
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"kind=(\w+)[^\n]*\\\n\s+params:='([^']+)'", readme)
    assert len(examples) >= 3
    kinds = method_registry(Settings(extra_kinds=()))
    for kind_name, params in examples:
        kind = kinds.get(kind_name)
        assert kind is not None, kind_name
        kind.params_model.model_validate(json.loads(params))
