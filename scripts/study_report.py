"""The one way the study scripts (sync_variant_study, sync_window_study, tempo_text_probe) save their
results: report.json and report.md in the --out folder, the markdown also printed."""

from __future__ import annotations

import json
from pathlib import Path


def write_study_report(out_dir: str | Path, report: dict, markdown: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown)
    print(markdown)
    return out
