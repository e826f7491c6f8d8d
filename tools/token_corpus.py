"""Measures the cut-stream token estimate (services/adapters/token_estimate.py) against a real
byte-pair tokenizer on a corpus of English prose, Markdown, Python, JSON and seven other languages,
and prints the figures docs/ledger.md §3 quotes. Not part of the test suite: a measurement.

The reference tokenizer is the one Anthropic's SDK shipped until version 0.38
(`anthropic/tokenizer.json`, a byte-pair tokenizer of Claude's earlier models), read with the
`tokenizers` package; the wheel comes from the package index:

    .venv/bin/python -m pip download anthropic==0.38.0 --no-deps -d build
    .venv/bin/python tools/token_corpus.py   # or: tools/token_corpus.py PATH/TO/THE.whl

(`build/` is the repository's ignored scratch directory.)
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import zipfile
from pathlib import Path

from tokenizers import Tokenizer

from services.adapters.token_estimate import text_tokens

ROOT = Path(__file__).resolve().parent.parent
WHEEL = ROOT / "build" / "anthropic-0.38.0-py3-none-any.whl"
LANGUAGES = {
    "german": "Die Bundesregierung hat am Mittwoch einen Gesetzentwurf beschlossen, der die Digitalisierung "
              "der Verwaltung beschleunigen soll. Bürgerinnen und Bürger sollen künftig die meisten Anträge "
              "online stellen können, ohne ein Amt persönlich aufsuchen zu müssen.",
    "french": "Le gouvernement a présenté mercredi un projet de loi destiné à accélérer la numérisation de "
              "l'administration. Les citoyens pourront bientôt effectuer la plupart de leurs démarches en "
              "ligne, sans devoir se rendre au guichet.",
    "spanish": "El gobierno presentó el miércoles un proyecto de ley para acelerar la digitalización de la "
               "administración pública. Los ciudadanos podrán realizar la mayoría de los trámites por "
               "internet, sin tener que acudir a una oficina.",
    "russian": "В среду правительство одобрило законопроект, который должен ускорить цифровизацию "
               "государственного управления. Граждане смогут подавать большинство заявлений онлайн.",
    "japanese": "政府は水曜日、行政のデジタル化を加速させるための法案を閣議決定した。市民は今後、"
                "役所に出向くことなく、ほとんどの申請をオンラインで行えるようになる。",
    "chinese": "政府周三批准了一项旨在加快行政数字化的法案。今后，公民无需亲自前往政府办公室，"
               "即可在网上提交大多数申请。",
    "korean": "정부는 수요일 행정의 디지털화를 가속화하기 위한 법안을 의결했다. 시민들은 앞으로 관공서를 "
              "직접 방문하지 않고도 대부분의 신청을 온라인으로 할 수 있게 된다.",
}


def corpus() -> list[tuple[str, str]]:
    """(kind, text) samples: paragraphs of the docs, functions of the code, JSON documents."""
    samples = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for paragraph in doc.read_text().split("\n\n"):
            if len(paragraph) > 200:
                markdown = paragraph.lstrip().startswith(("|", "-", "#", "`"))
                samples.append(("markdown" if markdown else "prose", paragraph))
    for module in sorted((ROOT / "services" / "core").glob("*.py")):
        for block in module.read_text().split("\n\n\n"):
            if len(block) > 200:
                samples.append(("python", block))
    spec = json.loads((ROOT / "tests" / "fuzz" / "openai_chat_schema.json").read_text()) \
        if (ROOT / "tests" / "fuzz" / "openai_chat_schema.json").exists() else {}
    for name, value in list(spec.items())[:40]:
        samples.append(("json", json.dumps({name: value})))
    for module in sorted((ROOT / "tests" / "fakes").glob("*_payloads.py")):
        for block in module.read_text().split("\n\n\n"):
            if "{" in block and len(block) > 200:
                samples.append(("json-ish", block))
    samples += [(f"lang:{name}", text) for name, text in LANGUAGES.items()]
    return samples


def reference(wheel: Path) -> Tokenizer:
    with zipfile.ZipFile(wheel) as archive:
        return Tokenizer.from_str(archive.read("anthropic/tokenizer.json").decode())


def main(wheel: str) -> None:
    tokenizer = reference(Path(wheel))
    rows: dict[str, list[tuple[int, int, int]]] = {}
    for kind, text in corpus():
        true = len(tokenizer.encode(text).ids)
        rows.setdefault(kind.split(":")[0], []).append(
            (true, text_tokens(text), math.ceil(len(text.encode()) / 4)))
    print("| text | samples | tokens (reference) | estimate: total error | estimate: median |error| "
          "| bytes/4: total error | bytes/4: median |error| |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    everything: list[tuple[int, int, int]] = []
    for kind, found in sorted(rows.items()):
        everything += found
        print(_row(kind, found))
    print(_row("all", everything))


def _row(kind: str, found: list[tuple[int, int, int]]) -> str:
    true = sum(t for t, _, _ in found)

    def total(i: int) -> str:
        return f"{(sum(r[i] for r in found) - true) / true:+.1%}"

    def median(i: int) -> str:
        return f"{statistics.median(abs(r[i] - r[0]) / r[0] for r in found):.1%}"

    return f"| {kind} | {len(found)} | {true} | {total(1)} | {median(1)} | {total(2)} | {median(2)} |"


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(WHEEL))
