"""mkdocs dialects to plain Markdown: admonitions, content tabs, blocks, snippet includes."""

from __future__ import annotations

import pytest

from ragloop.tasks import mkdocs
from tests.conftest import write_files


@pytest.mark.parametrize(
    ("text", "expected", "notes"),
    [
        ('!!! note "Mind the tide"\n    Check the table first.\n\n    Twice.\n\nAfter.',
         "**Mind the tide**\n\nCheck the table first.\n\nTwice.\n\nAfter.", {"admonitions": 1}),
        ("??? warning\n    Collapsed body.", "**Warning**\n\nCollapsed body.", {"admonitions": 1}),
        ('!!! tip ""\n    No title.', "No title.", {"admonitions": 1}),
        ('=== "Python"\n\n    ## Install\n\n    ```python\n    import x\n    ```\n\n=== "Shell"\n\n    pip install x',
         "**Python**\n\n\n## Install\n\n```python\nimport x\n```\n\n**Shell**\n\n\npip install x", {"content_tabs": 2}),
        ('=== "Outer"\n    !!! note\n        Nested.', "**Outer**\n\n**Note**\n\nNested.", {"content_tabs": 1, "admonitions": 1}),
        ("/// tip | Handy\nBody.\n///", "**Handy**\n\nBody.", {"blocks": 1}),
        ('```md\n!!! note "in code"\n    stays\n```', '```md\n!!! note "in code"\n    stays\n```', {}),
        ("Plain text.", "Plain text.", {}),
    ],
    ids=["admonition", "collapsible", "empty-title", "tabs-with-heading", "nested", "block", "inside-fence", "plain"],
)
def test_normalize_dialects(tmp_path, text, expected, notes):
    out, got = mkdocs.normalize(text, tmp_path / "page.md", tmp_path)
    assert out == expected
    assert got == notes


def test_tab_headings_become_headings_not_code(tmp_path):
    from markdown_it import MarkdownIt

    out, _ = mkdocs.normalize('=== "Python"\n\n    ## Install it\n\n    Words.', tmp_path / "p.md", tmp_path)
    tokens = MarkdownIt("commonmark").parse(out)
    assert any(t.type == "heading_open" for t in tokens) and not any(t.type == "code_block" for t in tokens)


def test_snippets_resolve_inside_the_source_and_drop_the_rest(tmp_path):
    root = write_files(tmp_path / "docs", {
        "includes/abbr.md": "*[HTML]: Hyper Text\nShared footer text.",
        "includes/nested.md": '--8<-- "includes/abbr.md"\nNested line.',
        "lines.md": "one\ntwo\nthree\nfour",
        "page.md": "",
    })
    write_files(tmp_path, {"secret.md": "outside the source"})
    text = ('Intro.\n\n--8<-- "includes/nested.md"\n\n--8<-- "lines.md:2:3"\n\n--8<-- "../secret.md"\n\n'
            '--8<-- "https://example.com/x.md"\n\n--8<-- "missing.md"\n\n--8<--\nincludes/abbr.md\n--8<--\nEnd.')
    out, notes = mkdocs.normalize(text, root / "page.md", root)
    assert "Nested line." in out and out.count("Shared footer text.") == 2
    assert "two\nthree" in out and "one" not in out.split("\n") and "four" not in out
    assert "outside the source" not in out and "--8<--" not in out
    assert notes == {"snippets_resolved": 4, "snippets_dropped": 3}


def test_snippet_cycles_stop(tmp_path):
    root = write_files(tmp_path / "docs", {"a.md": '--8<-- "b.md"\nA', "b.md": '--8<-- "a.md"\nB'})
    out, notes = mkdocs.normalize((root / "a.md").read_text(), root / "a.md", root)
    assert out == "B\nA" and notes == {"snippets_resolved": 1, "snippets_dropped": 1}


def test_attr_lists_leave_headings_and_lines_but_braces_elsewhere_stay(tmp_path):
    text = ('## Install FastAPI { #install-fastapi }\n\n### Run it {: .wide data-x="a b" #run } ##\n\n'
            'A paragraph.\n{: .note }\n\n```json\n{ "#a": 1 }\n{ #kept-in-code }\n```\n\n'
            "Set {x} and `{ #inline }`.\n\n## Braces {like this}\n")
    out, notes = mkdocs.normalize(text, tmp_path / "page.md", tmp_path)
    assert out == ('## Install FastAPI\n\n### Run it\n\nA paragraph.\n\n```json\n{ "#a": 1 }\n{ #kept-in-code }\n```\n\n'
                   "Set {x} and `{ #inline }`.\n\n## Braces {like this}\n")
    assert notes == {"attr_lists": 3}
    nested, _ = mkdocs.normalize('!!! note\n    ## Inside { #inside }', tmp_path / "page.md", tmp_path)
    assert nested == "**Note**\n\n## Inside"
