"""The benchmark's report: the Markdown tables of docs/results-log.md, written from the records of the bundle runs.

Pure formatting: everything comes from the records (``benchmark.json``), so a report can be rewritten from a
finished run, and tested without running anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.budgets import BUDGETS, LARGE_SIDE


def _stat(stats: Mapping[str, Any] | None, digits: int) -> str:
    """``mean ± sd (worst)`` of a metric summary; a dash where there is none."""
    if not stats or stats.get("mean") is None:
        return "–"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f} ({stats['worst']:.{digits}f})"


def _number(value: float | None, fmt: str) -> str:
    """A figure in ``fmt``; a dash where the run did not measure it."""
    return "–" if value is None else format(value, fmt)


def _loader_share(timing: Mapping[str, Any]) -> str:
    """The data loader's share of a training iteration, with both times."""
    iteration_ms = 1000 * (timing["loader_s_mean"] + timing["step_s_mean"])
    return f"{timing['loader_fraction']:.1%} ({1000 * timing['loader_s_mean']:.1f} ms of {iteration_ms:.1f} ms)"


def _spread(stats: Mapping[str, Any] | None, digits: int) -> str:
    """``mean (p95)`` of a severity summary's figure; a dash where there is none."""
    if not stats or stats.get("mean") is None:
        return "–"
    return f"{stats['mean']:.{digits}f} ({stats['p95']:.{digits}f})"


def _rho(agreement: Mapping[str, Any], score: str) -> str:
    rho = agreement.get(score, {}).get("pred_opacity_pct", {})
    return "–" if rho.get("spearman_rho") is None else f"{rho['spearman_rho']:.2f} (n={rho['n']})"


def severity_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The opacity bundles' severity table: overlap where opacity exists, the error of opacity %, the opacity %
    predicted on clear lungs (the false alarm), and Spearman's rho with the radiologists' scores."""
    scored = [r for r in records if r.get("severity")]
    if not scored:
        return []
    lines = [
        "",
        "| bundle | held out | IoU, cases with opacity: mean (p95) | abs. error of opacity %: mean (p95) "
        "| clear lungs | their predicted opacity %: mean (p95) | Spearman with radiologists: extent / opacity |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in scored:
        severity = record["severity"]
        clear = severity["clear_lungs"]["pred_opacity_pct"]
        radiologists = severity.get("radiologists", {})
        lines.append(
            f"| {record['bundle']} | {record.get('held_out', '?')} | {_spread(severity['with_opacity']['iou'], 3)} | "
            f"{_spread(severity['abs_error_pct'], 1)} | {clear['n']} | {_spread(clear, 1)} | "
            f"{_rho(radiologists, 'geographic_extent_mean')} / {_rho(radiologists, 'opacity_mean')} |"
        )
    return lines


def markdown(records: Sequence[Mapping[str, Any]], budget_name: str, started: str) -> str:
    """The results tables: accuracy per structure, then speed and memory per bundle."""
    devices = sorted({(r.get("train") or r.get("infer") or {}).get("device_name", "?") for r in records})
    lines = [
        f"Budget `{budget_name}` ({BUDGETS[budget_name].description}); scored on held-out cases "
        f"(column `held out`); device: {', '.join(devices)}; {started}.",
        "",
        "| bundle | dataset | held out | structure | cases | Dice mean ± sd (worst) | IoU mean ± sd (worst) "
        "| HD95 px mean ± sd (worst) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        dataset = Path(record["dataset"]).name
        metrics = record.get("metrics")
        if not metrics:
            failure = record.get("error", "?").splitlines()[0]
            lines.append(f"| {record['bundle']} | {dataset} | | failed: {failure} | | | | |")
            continue
        prefix = f"| {record['bundle']} | {dataset} | {record.get('held_out', '?')} |"
        for structure, groups in metrics["labels"].items():
            absent = groups["reference_absent"]
            # where some references lack the structure, Dice/IoU of 0 or 1 on those cases blur the mean: the
            # cases that have it are scored apart, the others by the false-positive share of the image
            scored = [("all", structure, metrics["cases"])]
            if absent["cases"]:
                scored.append(("reference_present", f"{structure}, cases with it", metrics["cases"] - absent["cases"]))
            for group, title, cases in scored:
                scores = groups[group]
                undefined = f", {scores['hd95_undefined']} undefined" if scores.get("hd95_undefined") else ""
                lines.append(
                    f"{prefix} {title} | {cases} | {_stat(scores['dice'], 3)} | {_stat(scores['iou'], 3)} | "
                    f"{_stat(scores['hd95'], 1)}{undefined} |"
                )
            if absent["cases"]:
                lines.append(
                    f"{prefix} {structure}, cases without it: predicted share of the image | {absent['cases']} | "
                    f"{_stat(absent['false_positive_fraction'], 3)} | | |"
                )
    lines += severity_lines(records)
    lines += [
        "",
        "| bundle | parameters | train img/s | loader / iteration | infer img/s | ms per image (dataset) | "
        "ms per 2048² image | peak RSS MB (train / infer) | peak GPU MB | threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        train, infer, large = record.get("train") or {}, record.get("infer") or {}, record.get("infer_large") or {}
        per_image = infer.get("iteration_s_each", [])[1:]
        large_each = large.get("iteration_s_each", [])
        parameters = train.get("parameters", infer.get("parameters"))
        lines.append(
            f"| {record['bundle']} | {_number(parameters, ',')} | {_number(train.get('images_per_s'), '.1f')} | "
            f"{_number(train.get('loader_fraction'), '.1%')} | {_number(infer.get('images_per_s'), '.1f')} | "
            f"{_number(1000 * float(np.median(per_image)) if per_image else None, '.0f')} | "
            f"{_number(1000 * float(np.median(large_each)) if large_each else None, '.0f')} | "
            f"{_number(train.get('peak_rss_mb'), '.0f')} / {_number(infer.get('peak_rss_mb'), '.0f')} | "
            f"{_number(train.get('peak_gpu_mb'), '.0f')} | {train.get('threads', infer.get('threads', '–'))} |"
        )
    profiled = [r for r in records if r.get("large_profile_ms")]
    if profiled:
        names = list(profiled[0]["large_profile_ms"]["stages"])
        lines += [
            "",
            f"Where one {LARGE_SIDE}x{LARGE_SIDE} inference spends its time (ms, in-process, best of 2; "
            "the three costliest steps last):",
            "",
            "| bundle | threads | " + " | ".join(names) + " | costliest steps |",
            "|---|---|" + "---|" * (len(names) + 1),
        ]
        for record in profiled:
            profile = record["large_profile_ms"]
            costliest = sorted(profile["steps"].items(), key=lambda step: -step[1])[:3]
            lines.append(
                f"| {record['bundle']} | {record.get('infer_large', {}).get('threads', '–')} | "
                + " | ".join(str(profile["stages"][n]) for n in names)
                + " | "
                + ", ".join(f"{name} {ms:.0f}" for name, ms in costliest)
                + " |"
            )
    comparison = [r for r in records if r.get("train_without_cache")]
    for record in comparison:
        cached, uncached = record["train"], record["train_without_cache"]
        lines += [
            "",
            f"Data loading, {record['bundle']}, same budget and benchmark run: with the cache (deterministic "
            f"transforms cached) the loader takes {_loader_share(cached)} of each training iteration; "
            f"with the cache off (every transform on every read) {_loader_share(uncached)}.",
        ]
    failed = [r for r in records if r.get("error")]
    if failed:
        lines += ["", "Failures:", ""] + [f"- {r['bundle']}: {r['error'].splitlines()[0]}" for r in failed]
    return "\n".join(lines) + "\n"
