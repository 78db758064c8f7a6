"""The documentation site: ``mkdocs build --strict`` builds it from the repository, and headless
Chromium opens every page of it, served over HTTP as a reader gets it: each page renders (its
content, its title, the search box) and every internal link resolves, to a page or file of the
site and, with a ``#fragment``, to an element of that page."""

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

from tests.test_observability import CHROMIUM, CHROMIUM_FLAGS


class Page(HTMLParser):
    """The hrefs and ids of an HTML page, and whether it has Material's content and search."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.classes: set[str] = set()
        self.headings = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        self.classes.update((found.get("class") or "").split())
        if tag == "a" and found.get("href"):
            self.hrefs.append(str(found["href"]))
        if tag == "h1":
            self.headings += 1


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - its signature
        pass


@pytest.fixture(scope="module")
def site(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(built)],
        cwd=repo_root,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return built


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def pages(site: Path) -> list[str]:
    """Every page of the site, as a path below its root (``how-to/flower/``)."""
    found = []
    for index in sorted(site.rglob("index.html")):
        relative = index.parent.relative_to(site).as_posix()
        found.append("" if relative == "." else relative + "/")
    return found


def test_the_site_has_every_page_of_the_nav(site: Path) -> None:
    found = pages(site)
    for page in ("", "tutorial/", "how-to/deploy-hooks/", "reference/cli/",
                 "reference/configuration/", "reference/exit-codes/", "reference/metrics/",
                 "reference/json/", "ARCHITECTURE/", "changelog/"):  # fmt: skip
        assert page in found, page
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "tenantfleet migrate" in cli and "--wave-hold" in cli  # generated from the parser
    assert "TENANTFLEET_LOCK_TIMEOUT" in (site / "reference/configuration/index.html").read_text()
    assert "search_index.json" in "".join(p.name for p in (site / "search").iterdir())


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs it)")
def test_every_page_renders_in_chromium_and_every_internal_link_resolves(
    site: Path, served: str
) -> None:
    assert CHROMIUM is not None
    rendered: dict[str, Page] = {}
    for path in pages(site):
        dom = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, "--dump-dom", served + path],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        page = rendered[path] = Page(dom)
        assert "md-content__inner" in page.classes, path  # Material laid the page out
        assert page.headings == 1, (path, page.headings)
        assert "md-search__input" in page.classes, path  # the search box
    broken = []
    for path, page in rendered.items():
        for href in page.hrefs:
            target = urljoin(served + path, href)
            if not target.startswith(served):
                continue  # another site
            address, fragment = urldefrag(target)
            relative = urlsplit(address).path.removeprefix(urlsplit(served).path)
            if relative in rendered:
                if fragment and fragment not in rendered[relative].ids:
                    broken.append(f"{path}: {href} (no #{fragment})")
            elif not (site / relative).is_file():
                broken.append(f"{path}: {href}")
    assert not broken, "\n".join(broken)
