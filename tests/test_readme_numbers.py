"""Every figure the README reports stands in the results file it cites.

In the README's results (from "## Results" on), a paragraph or table row with a decimal figure must name the file
it comes from, ``benchmarks/results/NAME.json`` (or just ``NAME.json``), and each decimal number in it (``1.012×``,
``18.47``, ``0.55×``) must equal a number in that file once the file's value is rounded to the digits shown.
Integers are settings (tokens, steps, seeds) and are not checked. A row whose source cell says "same" cites the
file of the row above; a table with no source column cites the file its introducing paragraph names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
CITE = re.compile(r"(?:benchmarks/results/)?([\w.-]+)\.json")
# a decimal figure, optionally signed; not part of a version (2.13), a date, a key or an exponent (3e-4)
FIGURE = re.compile(r"(?<![\w.\-+/=])([−+-]?\d[\d,]*\.\d+)(?![\w.]*[eE/])(?![\d.]*\.\d)")
IGNORE = re.compile(r"`[^`]*`|torch \d+\.\d+|\d+ nm|\d+(?:\.\d+)? pJ|\(?[<>≤≥]=?\s*[−-]?\d+\.\d+×?\)?|target \S+")


def numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    return []


def blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, text, cited file) per paragraph, and per table row (rows inherit a "same" source)."""
    out, para, start, last_row_file, para_file, in_table = [], [], 0, None, None, False
    lines = text.splitlines()
    in_code = False
    for i, line in enumerate(lines + [""], 1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("|"):
            if not in_table:  # a table without a source column takes the file its introduction cites
                in_table, last_row_file = True, para_file
            cited = CITE.findall(line)
            same = re.search(r"\|\s*same\s*\|?\s*$", line)
            name = cited[-1] if cited else last_row_file if (same or last_row_file == para_file) else None
            last_row_file = name
            out.append((i, line, name))
            continue
        in_table = False
        if line.strip():
            if not para:
                start = i
            para.append(line)
            continue
        if para:
            joined = " ".join(para)
            cited = CITE.findall(joined)
            para_file = cited[0] if len(set(cited)) == 1 else None
            out.append((start, joined, para_file))
            para = []
    return out


def mismatches(readme: Path = README, results: Path = RESULTS) -> list[str]:
    text = readme.read_text()
    section = text[text.index("## Results"):] if "## Results" in text else text
    offset = text[: len(text) - len(section)].count("\n")
    wrong = []
    cache: dict[str, list[float]] = {}
    for line_no, block, name in blocks(section):
        figures = FIGURE.findall(IGNORE.sub(" ", block))
        if name is None:
            if figures:
                wrong.append(f"README.md:{line_no + offset}: figures {', '.join(figures[:4])} cite no results file")
            continue
        path = results / f"{name}.json"
        if not path.is_file():
            wrong.append(f"README.md:{line_no + offset}: cites {path.name}, which does not exist")
            continue
        values = cache.setdefault(name, numbers(json.loads(path.read_text())))
        for shown in figures:
            number = float(shown.replace(",", "").replace("−", "-"))
            digits = len(shown.split(".")[1])
            half = 0.5 * 10 ** -digits + 1e-9  # the file's value, rounded half-up to the digits shown
            if not any(abs(v - number) <= half or abs(abs(v) - abs(number)) <= half for v in values):
                wrong.append(f"README.md:{line_no + offset}: {shown} not found in {path.name}")
    return wrong


def test_the_checker_finds_a_wrong_figure(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "demo.json").write_text(json.dumps({"ppl": 18.4731, "ratio": [1.0123]}))
    readme = tmp_path / "README.md"
    readme.write_text("## Results\n\nPerplexity 18.47 at 1.012× (`benchmarks/results/demo.json`).\n\n"
                      "| what | figure | source |\n|---|---|---|\n| x | 1.013× | `demo.json` |\n| y | 18.5 | same |\n")
    found = mismatches(readme, tmp_path / "results")
    assert found == ["README.md:7: 1.013 not found in demo.json"], found


@pytest.mark.skipif(not README.is_file(), reason="no README")
def test_readme_figures_are_in_their_results_files():
    wrong = mismatches()
    assert not wrong, "README figures without a source (fix the README or re-run the benchmark):\n" + "\n".join(wrong)
