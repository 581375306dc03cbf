"""The release report: tables and pictures a reviewer reads in the Prefect UI and MLflow."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from shipyard.contracts import ReleaseSummary
from shipyard.gates import Measurement, Verdict
from shipyard.manifest import Manifest


def variant_rows(measurements: list[Measurement], verdict: Verdict) -> list[dict[str, Any]]:
    """One row per variant: measurements, gate verdicts, and whether it was chosen."""
    rows = []
    for m in measurements:
        results = [r for r in verdict.results if r.variant == m.variant]
        failed = [r.gate for r in results if not r.passed]
        rows.append(
            {
                "variant": m.variant.value,
                "chosen": "yes" if m.variant == verdict.chosen else "",
                "size_kb": round(m.size_bytes / 1024, 1),
                "accuracy": round(m.accuracy, 4),
                "max_dprob": f"{m.max_prob_delta:.1e}",
                "batch_dprob": f"{m.batch_invariance.max_prob_delta:.1e}",
                "batch_label_changes": m.batch_invariance.label_changes,
                "p50_b1_ms": m.batch1.p50_ms,
                "p99_b1_ms": m.batch1.p99_ms,
                "p50_b32_ms": m.batch32.p50_ms,
                "p99_b32_ms": m.batch32.p99_ms,
                "gates": "pass" if not failed else "FAIL: " + ", ".join(failed),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def pyplot() -> ModuleType:
    """matplotlib's pyplot, drawing to files only (never a window); imported when a picture is
    drawn, not with the report module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tradeoff_plot(measurements: list[Measurement], chosen: str | None, out: Path) -> Path:
    """Size against batch-1 p50 latency, one point per variant, annotated with accuracy."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for m in measurements:
        ax.scatter(
            m.size_bytes / 1024,
            m.batch1.p50_ms,
            s=120 if m.variant == chosen else 60,
            marker="*" if m.variant == chosen else "o",
        )
        ax.annotate(
            f"{m.variant} ({m.accuracy:.2%})",
            (m.size_bytes / 1024, m.batch1.p50_ms),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=9,
        )
    ax.set_xlabel("size (KiB)")
    ax.set_ylabel("p50 latency at batch 1 (ms)")
    ax.set_title("Variants: size, latency, accuracy (★ chosen)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def confusion_plot(confusion: list[list[int]], labels: list[str], title: str, out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            if count:
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if count > max(map(max, confusion)) / 2 else "black",
                )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def inline_png(path: Path, alt: str) -> str:
    """A markdown image that needs no server: the PNG as a data URI."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def write_json(data: Any, out: Path) -> Path:
    out.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return out


def verdict_json(measurements: list[Measurement], verdict: Verdict) -> dict[str, Any]:
    return {
        "chosen": verdict.chosen,
        "failures": verdict.failures,
        "gates": [asdict(r) for r in verdict.results],
        "variants": [{**asdict(m), "path": m.path.name} for m in measurements],
    }


def artifact_key(model: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]", "-", f"{model}-{what}")


def release_markdown(
    summary: ReleaseSummary, rows: list[dict[str, Any]], gates: list[str], pictures: list[Path]
) -> str:
    """The release report shown in the Prefect UI."""
    links = []
    if summary.mlflow_run_url:
        links.append(f"[MLflow run]({summary.mlflow_run_url})")
    if summary.mlflow_version_url:
        links.append(f"[model version]({summary.mlflow_version_url})")
    lines = [
        f"# Release {summary.model} v{summary.version or '-'}: {summary.status}",
        "",
        f"- **source**: `{summary.source}` at `{summary.git_sha or 'working tree'}`"
        + (" (uncommitted changes)" if summary.git_dirty else ""),
        f"- **fingerprint**: `{summary.fingerprint}`",
        f"- **variant**: `{summary.variant}`, onnx sha256 `{summary.onnx_sha256}`",
        f"- **MLflow run**: `{summary.mlflow_run_id}`"
        + (f" ({', '.join(links)})" if links else ""),
    ]
    if summary.image_digest:
        lines.append(f"- **image**: `{summary.image}` digest `{summary.image_digest}`")
    if summary.endpoint:
        previous = summary.previous_version
        lines.append(
            f"- **deployed** ({summary.strategy}): v{summary.deployed_version} serves on "
            f"[{summary.endpoint}]({summary.endpoint}/v2/models/{summary.model})"
            + (
                f"; `previous` is v{previous} (`shipyard rollback {summary.model}`)"
                if previous
                else ""
            )
        )
    if summary.reused:
        lines.append("- this fingerprint was registered before: its version was reused")
    lines += ["", "## Variants", "", markdown_table(rows), "", "## Gates", ""]
    lines += [f"- {g}" for g in gates]
    if summary.stages:
        lines += ["", "## Stages", "", *stage_lines(summary)]
    for picture in pictures:
        lines += ["", inline_png(picture, picture.stem)]
    return "\n".join(lines) + "\n"


def stage_lines(summary: ReleaseSummary) -> list[str]:
    """Where the release spent its time: its wall time, then one row per stage that ran."""
    stages = summary.stages or []
    in_stages = sum(s.seconds for s in stages)
    total = f"{summary.seconds:.2f} s in all, " if summary.seconds is not None else ""
    rows = [
        {
            "stage": s.stage,
            "state": s.state,
            "seconds": f"{s.seconds:.2f}",
            "cached": "yes" if s.cached else "",
        }
        for s in stages
    ]
    return [f"{total}{in_stages:.2f} s in these stages:", "", markdown_table(rows)]


def write_report(
    measurements: list[Measurement], verdict: Verdict, manifest: Manifest, out_dir: Path
) -> list[Path]:
    """The validation report (JSON) and its pictures, written into `out_dir`.

    The pictures are drawn again only when what they show changed: a release of unchanged
    inputs validates the same measurements, and drawing them (matplotlib included) takes
    longer than every gate. `.pictures.sha256` names what the pictures on disk show; it is
    written after them, so pictures cut off by a killed process are drawn again.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = verdict_json(measurements, verdict)
    pictures = [out_dir / "variants.png", out_dir / "confusion.png"]
    drawn = out_dir / ".pictures.sha256"
    shown = hashlib.sha256(
        json.dumps([report, manifest.name, manifest.labels], sort_keys=True, default=str).encode()
    ).hexdigest()
    if not all(p.is_file() for p in pictures) or _text(drawn) != shown:
        drawn.unlink(missing_ok=True)
        chosen = next((m for m in measurements if m.variant == verdict.chosen), measurements[0])
        tradeoff_plot(measurements, verdict.chosen, pictures[0])
        confusion_plot(
            chosen.confusion,
            manifest.labels,
            f"{manifest.name} {chosen.variant} on the test set",
            pictures[1],
        )
        drawn.write_text(shown)
    return [write_json(report, out_dir / "validation.json"), *pictures]


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
