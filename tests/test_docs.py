"""The README and the docs site: the site builds with ``--strict``, every page is in the nav,
the README stays short and its first request names the model the server serves with no
flags, every script a page names exists, and the references cover the code they describe."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MKDOCS = Path(sys.executable).parent / "mkdocs"
README_MAX_LINES = 250


def pages() -> list[Path]:
    """Every markdown page of the site (the build hook's folder holds none)."""
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def texts() -> dict[Path, str]:
    return {p: p.read_text() for p in [README, *pages()]}


def nav_pages(nav: object) -> list[str]:
    """The page paths of a mkdocs nav, depth first."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    raise TypeError(f"unexpected nav entry {nav!r}")


def load_hook():
    path = DOCS / "hooks" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict:\n{result.stdout}\n{result.stderr}"
    return out


def test_site_builds_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "reference" / "cli" / "index.html").is_file()


def test_cli_reference_is_rendered_from_every_parser(site: Path) -> None:
    from verifier_training.__main__ import COMMANDS
    from verifier_training.research.__main__ import COMMANDS as RESEARCH

    page = (site / "reference" / "cli" / "index.html").read_text()
    assert "<!-- cli:" not in page
    wanted = ["usage: bon-server serve", "usage: python -m loadtest run",
              "usage: python -m loadtest bench"]
    wanted += [f"usage: python -m verifier_training {name}" for name in COMMANDS]
    wanted += [f"usage: python -m verifier_training.research {name}" for name in RESEARCH]
    missing = [w for w in wanted if w not in page]
    assert not missing, f"the CLI reference lacks {missing}"


def test_cli_hook_fails_loudly() -> None:
    hook = load_hook()
    with pytest.raises(hook.CLIReferenceError):
        hook.package_commands("verifier_training.no_such_package")
    with pytest.raises(hook.CLIReferenceError, match="lost its marker"):
        hook.render("# The CLI\n\nno markers here\n")


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    in_nav = nav_pages(config["nav"])
    on_disk = [p.relative_to(DOCS).as_posix() for p in pages()]
    assert sorted(set(on_disk) - set(in_nav)) == [], "pages missing from the nav"
    assert sorted(set(in_nav) - set(on_disk)) == [], "nav entries with no page"
    assert len(in_nav) == len(set(in_nav)), "a page is in the nav twice"


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_readme_first_request_names_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BON_")]:
        monkeypatch.delenv(name)
    from bon_server.config import Settings

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    sdk = [b for b in blocks if "from openai import" in b or "OpenAI(" in b]
    assert sdk, "README.md has no openai SDK example"
    models = re.findall(r"model=\"([^\"]+)\"", sdk[0])
    assert models, "the README's first SDK example names no model"
    assert models[0] == "paths-policy"
    assert models[0] == Settings().model_name, "bon-server serve with no flags serves another model"


def test_readme_quickstart_shows_what_the_verifier_checks() -> None:
    text = README.read_text()
    assert "paths-orm" in text and "answer line" in text and "step lines" in text


def test_every_named_script_exists() -> None:
    named = {
        (path, match)
        for path, text in texts().items()
        for match in re.findall(r"docs/[\w./-]+?\.(?:sh|py)\b", text)
    }
    assert any(m.endswith(".sh") for _, m in named), "no page names a docs/*.sh script"
    missing = sorted(f"{p.relative_to(ROOT)}: {m}" for p, m in named if not (ROOT / m).is_file())
    assert not missing, f"pages name scripts that do not exist: {missing}"


def test_readme_links_resolve(site: Path) -> None:
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", README.read_text())
    assert links, "README.md links to no docs page"
    for target, anchor in links:
        assert (ROOT / target).is_file(), f"README.md links to a missing {target}"
        if anchor:
            rel = Path(target).relative_to("docs").with_suffix("")
            html = site / ("index.html" if rel.name == "index" and rel.parent == Path(".")
                           else rel / "index.html")
            assert f'id="{anchor}"' in html.read_text(), f"README.md: no #{anchor} in {target}"


def test_no_undated_session_wording() -> None:
    found = sorted(
        str(p.relative_to(ROOT)) for p, t in texts().items() if re.search(r"this session", t, re.I)
    )
    assert not found, f"'this session' instead of a date in {found}"


def test_api_reference_names_every_request_field() -> None:
    from bon_server.protocol import ChatCompletionRequest, CompletionRequest

    page = (DOCS / "reference" / "api.md").read_text()
    fields = set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)
    missing = sorted(f for f in fields if f"`{f}`" not in page)
    assert not missing, f"docs/reference/api.md does not document {missing}"


def test_metrics_reference_names_every_metric() -> None:
    from bon_server.metrics import Metrics

    page = (DOCS / "reference" / "metrics.md").read_text()
    names = set()
    for family in Metrics().registry.collect():
        if family.name.startswith("bon_"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    assert len(names) >= 19
    missing = sorted(n for n in names if f"`{n}`" not in page)
    assert not missing, f"docs/reference/metrics.md does not document {missing}"
