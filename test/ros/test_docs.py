"""The documentation stays true to the code: generated tables, links between pages."""

import re
from pathlib import Path

from sdcpc_ros.node import parameters_markdown

REPO = Path(__file__).resolve().parents[2]


def test_the_parameter_table_in_docs_is_the_one_the_node_declares():
    text = (REPO / "docs" / "node.md").read_text()
    block = re.search(r"<!-- parameters:begin[^>]*-->\n(.*?)<!-- parameters:end -->", text, re.S)
    assert block, "docs/node.md lost its parameter-table markers"
    assert block.group(1) == parameters_markdown(), (
        "docs/node.md's parameter table is stale: regenerate it with "
        "python -c 'from sdcpc_ros.node import parameters_markdown as p; print(p())'")


def test_relative_links_in_readme_and_docs_point_to_files_that_exist():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
