# SPDX-License-Identifier: GPL-3.0-or-later
"""Every documented shell command runs as written: README.md and docs/*.md, walked block by block.

How the documentation marks its commands
-----------------------------------------
Every fenced ``bash`` or ``sh`` block of README.md and docs/*.md is a block of commands, and
the line right above its opening fence is an HTML comment (invisible on GitHub) that says
whether this test runs it:

* ``<!-- runnable: timeout=S [installed] [needs=PATH] [stop-when="REGEX"] [expect="REGEX"] -->``
  The block runs, as ``bash -e -o pipefail -c BLOCK``, and must end with exit code 0 within
  ``S`` seconds (its whole process group is killed then, and the test fails).

  - ``installed``: the block starts with the README's install prefix (``python3 -m venv .venv
    && . .venv/bin/activate && pip install ... &&``): the test's own virtual environment, first
    on ``PATH``, stands for it, and the rest of the block runs (no pip install per command).
  - ``needs=PATH``: the block reads PATH (relative to the clone, e.g.
    ``../shared/data/jungfrau_module_real.h5``); skipped with that reason when it is missing.
  - ``stop-when="REGEX"``: for commands that run until Ctrl-C (the monitor, the demo): once the
    block's output matches REGEX, its process group gets SIGINT, as from a terminal's Ctrl-C,
    and the block must then end by itself; exit code 0, or bash's for a Ctrl-C (130, or its
    death by SIGINT), passes.
    Nothing waits a fixed time: the block is stopped as soon as it has shown what it should.
  - ``expect="REGEX"``: the output (stdout and stderr) must match REGEX.

  No block may print a Python traceback or MPICH's hydra assertion errors.
* ``<!-- not-runnable: REASON -->``: the block is reported as skipped with REASON (a real
  detector's IP, a display, a program that is not installed here, a measurement of minutes).

A shell block with neither comment fails :func:`test_every_shell_block_is_marked`, so a new
command cannot slip in untested. Output examples and other text use plain fences (```` ``` ````),
configuration ``yaml``, code ``python``: they are not commands.

Where the blocks run
--------------------
In a temporary ``git clone`` of this repository at its current commit (commit the documentation
before running this test), with this virtual environment's ``bin`` first on ``PATH`` and the
clone first on ``PYTHONPATH`` (so the clone's code runs, not an installed copy), no display
(``DISPLAY`` unset) and ``../shared/data`` beside the clone linked to the real data when present.
The blocks of one page run in order in the clone's root (a later block uses the files an
earlier one wrote), each page in a clone of its own. Each block runs in a network namespace of
its own (``unshare -rn``, only its loopback interface up) where the kernel allows it, so the
fixed ports of the documentation (30001, 12321, ...) never meet another program's, and a
documented detector address could not be reached; elsewhere on the host's 127.0.0.1.
"""

import contextlib
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(sys.executable).parent
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(runnable|not-runnable):\s*(.*?)\s*-->\s*$")
_SHELL = {"bash", "sh"}
_INSTALL_PREFIX = re.compile(
    r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install [^&]*&& ")
_REJECT = re.compile(r"Traceback \(most recent call last\)|HYD_\w+|assert \(.*\) failed")
_STOP_GRACE = 50.0  # s a block has to end after its Ctrl-C


def _pages() -> list[pathlib.Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(page: pathlib.Path) -> list[dict]:
    """The fenced shell blocks of ``page``: ``{"line", "code", "kind", "options"}`` each, where
    kind is "runnable", "not-runnable" or None (unmarked) and options the marker's text."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if fence.group(1) in _SHELL:
            marker = _MARKER.match(lines[index - 1]) if index else None
            blocks.append({"line": index + 1, "code": "\n".join(lines[index + 1:end]),
                           "kind": marker.group(1) if marker else None,
                           "options": marker.group(2) if marker else ""})
        index = end + 1
    return blocks


def _options(text: str) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for word in shlex.split(text):
        key, _, value = word.partition("=")
        options[key] = value if value else True
    return options


def _namespace_prefix() -> list[str]:
    """``unshare -rn`` with the loopback up, where the kernel allows it; else nothing."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return []
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"],
                           capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        return []
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


@pytest.fixture(scope="module")
def namespace() -> list[str]:
    return _namespace_prefix()


def _clone(destination: pathlib.Path) -> pathlib.Path:
    """A clone of the repository at its current commit, with ``../shared`` linked."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False, timeout=60)
    if head.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: {head.stderr.strip()}")
    clone = destination / "om"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(clone)], check=True,
                   timeout=120)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", head.stdout.strip()],
                   check=True, timeout=120)
    shared = REPO.parent / "shared"
    if shared.exists():
        (destination / "shared").symlink_to(shared)
    return clone


def _environment(clone: pathlib.Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM",
                                  "VIRTUAL_ENV", "PYTHONPATH")}
    environment.update(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                       PYTHONPATH=str(clone), VIRTUAL_ENV=str(VENV_BIN.parent),
                       PYTHONUNBUFFERED="1")
    return environment


def _run_block(code: str, options: dict, clone: pathlib.Path, log: pathlib.Path,
               namespace: list[str]) -> tuple[int, str]:
    """Runs one block; returns (exit code, output). Bounded by the block's timeout."""
    timeout = float(options["timeout"])
    stop_when = re.compile(options["stop-when"]) if "stop-when" in options else None
    with open(log, "wb") as output:
        process = subprocess.Popen([*namespace, "bash", "-e", "-o", "pipefail", "-c", code],
                                   cwd=clone, env=_environment(clone), stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.monotonic() + timeout
        interrupted = False
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"did not end within {timeout:.0f} s")
                if (stop_when is not None and not interrupted
                        and stop_when.search(log.read_text(errors="replace"))):
                    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C
                    interrupted = True
                    deadline = min(deadline + _STOP_GRACE, time.monotonic() + _STOP_GRACE)
                time.sleep(0.2)
        finally:
            # Also what the block left in the background (a simulator started with '&').
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    text = log.read_text(errors="replace")
    if stop_when is not None and not interrupted:
        raise AssertionError(f"ended before its output matched {stop_when.pattern!r}")
    return process.returncode, text


def test_every_shell_block_is_marked():
    """Each ``bash``/``sh`` block says whether it runs here (and why not): nothing untested
    slips in."""
    unmarked = [f"{page.relative_to(REPO)}:{block['line']}" for page in _pages()
                for block in shell_blocks(page) if block["kind"] is None]
    assert not unmarked, f"shell blocks without a runnable/not-runnable comment: {unmarked}"
    for page in _pages():
        for block in shell_blocks(page):
            if block["kind"] == "runnable":
                options = _options(block["options"])
                # pytest's own timeout (pyproject.toml) is 300 s: room for a Ctrl-C's grace.
                assert 0 < float(options.get("timeout", 0)) <= 240, f"{page.name}:{block['line']}"
                assert set(options) <= {"timeout", "installed", "needs", "stop-when", "expect"}
            elif block["kind"] == "not-runnable":
                assert block["options"], f"{page.name}:{block['line']}: no reason given"


def _all_blocks() -> list[tuple[str, int]]:
    return [(page.name, block["line"]) for page in _pages() for block in shell_blocks(page)]


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> dict[str, pathlib.Path]:
    """One fresh clone per page, made when the page's first block runs."""
    class _Clones(dict):
        def __missing__(self, page: str) -> pathlib.Path:
            self[page] = _clone(tmp_path_factory.mktemp(page.replace(".", "_")))
            return self[page]

    return _Clones()


@pytest.mark.slow
@pytest.mark.parametrize("page, line", _all_blocks(), ids=[f"{p}:{n}" for p, n in _all_blocks()])
def test_documented_command(page, line, clones, namespace, tmp_path):
    """One shell block of the documentation, run as the module's docstring says (the blocks of
    a page run in order, in the page's clone); not-runnable blocks are skipped with their
    reason."""
    source = REPO / page if page == "README.md" else REPO / "docs" / page
    block = next(b for b in shell_blocks(source) if b["line"] == line)
    where = f"{page}:{line}"
    if block["kind"] != "runnable":
        pytest.skip(f"{where}: {block['options'] or 'not marked'}")
    options = _options(block["options"])
    clone = clones[page]
    if "needs" in options and not (clone / str(options["needs"])).exists():
        pytest.skip(f"{where}: needs {options['needs']} (the real data)")
    code = block["code"]
    if options.get("installed"):
        assert _INSTALL_PREFIX.match(code), f"{where}: no install prefix to stand for"
        code = _INSTALL_PREFIX.sub("", code, count=1)
    log = tmp_path / "output.log"
    started = time.monotonic()
    try:
        exit_code, output = _run_block(code, options, clone, log, namespace)
    except AssertionError as error:
        raise AssertionError(f"{where}: {error}\n{log.read_text(errors='replace')[-4000:]}")
    print(f"{where}: exit code {exit_code} in {time.monotonic() - started:.1f} s\n{output}")
    # After a Ctrl-C, bash ends with 130, or dies of the SIGINT itself (-2 here).
    allowed = (0, 130, -signal.SIGINT) if "stop-when" in options else (0,)
    assert exit_code in allowed, f"{where}: exit code {exit_code}\n{output[-4000:]}"
    rejected = _REJECT.search(output)
    assert rejected is None, f"{where}: printed {rejected.group(0)!r}\n{output[-4000:]}"
    if "expect" in options:
        assert re.search(str(options["expect"]), output), (
            f"{where}: output does not match {options['expect']!r}\n{output[-4000:]}")
