"""The README is a front door and docs/ holds the rest: every page linked, every link, `make` target, module
and console command they name exists, so a reader who follows one never lands nowhere."""
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def text(page: Path) -> str:
    return page.read_text()


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_the_readme_is_short_and_links_every_docs_page():
    readme = text(ROOT / "README.md")
    assert len(readme.split()) <= 1500
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert linked == {f"docs/{p.name}" for p in PAGES[1:]}
    assert readme.index("make demo") < readme.index("## ")  # the two commands come first


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(page):
    for target in re.findall(r"\]\(([^)#\s]+)", text(page)):
        if not re.match(r"[a-z]+://", target):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_make_target_module_and_command_named_exists(page):
    body, targets = text(page), make_targets()
    for target in re.findall(r"`make ([a-z][a-z0-9-]*)", body) + re.findall(r"^\s*make ([a-z][a-z0-9-]*)", body, re.M):
        assert target in targets, f"{page.name} names `make {target}`; the Makefile has no such target"
    for module in re.findall(r"python -m (dmlight(?:\.[a-z_]+)*)", body):
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), f"{page.name}: {module}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for command in re.findall(r"\b(dmlight-[a-z]+)\b", body):
        assert command in scripts, f"{page.name} names {command}; pyproject.toml's scripts: {sorted(scripts)}"
    for path in re.findall(r"`((?:dmlight|tests|bench|conf)/[\w/.-]+\.(?:py|yaml))`", body):
        assert (ROOT / path).exists(), f"{page.name} names {path}, which does not exist"


def test_the_checks_find_a_missing_target():
    """The target check is not vacuous: `make no-such-target` is not among the Makefile's targets."""
    assert "demo" in make_targets() and "no-such-target" not in make_targets()
