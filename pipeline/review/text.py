"""``pipeline inspect`` and ``compare`` as text: :mod:`pipeline.review.inspection`'s documents, for people."""

from __future__ import annotations

import math
from typing import Any

from pipeline.outputs.carry import describe

TEXT_EXAMPLES = 3  # compare's text shows this many of each difference (--json: SHOWN)
TOP = 5  # compare documents from before overlap_k compared the first 5 labels


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def render_inspect(doc: dict[str, Any]) -> str:
    """``pipeline inspect``'s text."""
    counts, model = doc["counts"], doc["model"]
    committed = f" (committed {doc['committed_at']})" if doc["committed_at"] else ""
    lines = [f"output     {doc['uri']}", f"run        {doc['run_id']}{committed}"]
    lines.append(
        f"outcome    {counts['rows']:,} rows: {counts['ok']:,} ok ({_pct(counts['ok'], counts['rows'])}), "
        f"{counts['failed']:,} failed"
        + ("" if doc["consistent_with_manifest"] else "  WARNING: the parts do not match _SUCCESS's counts")
    )
    lines += [f"             {reason:<22}{n:>10,}" for reason, n in doc["failed_by_reason"].items()]
    speed = doc["throughput"]
    lines.append(f"throughput {speed['images_per_second']} images/s over {speed['seconds']} s")
    timeline = ", ".join(f"{name} {seconds} s" for name, seconds in doc["timeline_s"].items())
    lines.append(f"start-up   {timeline or '-'}")
    lines.append(f"model      {model['name']}  weights sha256 {model['sha256']}")
    lines.append(f"config     {doc['config_hash']}  ({doc['parts']} part files)")
    if doc.get("incremental") is not None:
        lines.append(f"previous   {describe(doc['incremental'])}")
    lines += [f"warning    {text}" for text in doc["warnings"]]
    if doc["embedding"] is not None:
        lines += _embedding_lines(doc["embedding"], counts["ok"])
    else:
        lines += _prediction_lines(doc, counts["ok"])
    lines.append("\nfailed rows (a sample, by reason)" if doc["failed_sample"] else "\nfailed rows: none")
    lines += [f"  {row['reason']:<20} {row['uri']}  {row['error'] or ''}" for row in doc["failed_sample"]]
    return "\n".join(line.rstrip() for line in lines)


def _histogram(bins: list[dict[str, Any]], decimals: int) -> list[str]:
    widest = max([item["rows"] for item in bins] + [1])
    return [
        f"  {item['low']:.{decimals}f}-{item['high']:.{decimals}f} {item['rows']:>10,}  "
        + "#" * round(40 * item["rows"] / widest)
        for item in bins
    ]


def _embedding_lines(embedding: dict[str, Any], ok: int) -> list[str]:
    norms = embedding["norms"]
    mean = "-" if norms["norm_mean"] is None else f"{norms['norm_mean']:.4f}"
    lines = [
        f"\nembeddings {ok:,} vectors of dimension {embedding['dim'] or 'mixed'}",
        f"  NaN/Inf   {embedding['rows_with_nan_or_inf']:,} rows ({embedding['nan_or_inf_values']:,} values)",
        f"\nL2 norms (finite vectors; mean {mean})",
    ]
    return lines + _histogram(norms["bins"], _decimals(norms["bins"]))


def _decimals(bins: list[dict[str, Any]], least: int = 3) -> int:
    """Enough decimals that no two bin edges print alike (unit vectors' norms differ in the 6th)."""
    width = bins[0]["high"] - bins[0]["low"] if bins else 1.0
    return min(12, max(least, math.ceil(-math.log10(width)) + 1)) if width > 0 else least


def _prediction_lines(doc: dict[str, Any], ok: int) -> list[str]:
    conf = doc["confidence"]
    lines = [f"\ntop labels ({doc['labels']['distinct']:,} distinct)"]
    lines += [
        f"  {item['label']:<30}{item['rows']:>10,}  {_pct(item['rows'], ok)}" for item in doc["labels"]["top"]
    ]
    mean = "-" if conf["mean"] is None else f"{conf['mean']:.3f}"
    lines.append(f"\nconfidence (score of ok rows; mean {mean})")
    lines += _histogram(conf["bins"], 1)
    lines.append("\nlowest confidence")
    lines += [f"  {row['score']:.4f}  {row['label']:<24} {row['uri']}" for row in doc["lowest_confidence"]]
    return lines


def render_compare(doc: dict[str, Any]) -> str:
    """``pipeline compare``'s text: labels for classify outputs, cosines for embed ones."""
    rows = doc["rows"]
    lines = [
        f"{side:<5}{doc[side]['uri']}  run {doc[side]['run_id']}  model {doc[side]['model']['name']} "
        f"({str(doc[side]['model']['sha256'])[:12]})"
        for side in ("base", "new")
    ]
    lines.append(
        f"rows       {rows['in_both']:,} in both, {rows['only_in_base']:,} only in base, "
        f"{rows['only_in_new']:,} only in new"
    )
    lines.append(
        f"failures   {rows['failed_only_in_base']:,} failed only in base, "
        f"{rows['failed_only_in_new']:,} only in new, {rows['failed_in_both']:,} in both"
    )
    lines += _cosine_lines(doc) if doc.get("task") == "embed" else _label_lines(doc)
    for kind, shown in doc["examples"].items():
        if shown:
            lines.append(f"\n{kind.replace('_', ' ')} (e.g.)")
            lines += [f"  {row['uri']}  {row['reason'] or ''}" for row in shown[:TEXT_EXAMPLES]]
    return "\n".join(line.rstrip() for line in lines)


def _label_lines(doc: dict[str, Any]) -> list[str]:
    rows, agreement, overlap = doc["rows"], doc["top1_agreement"], doc["top5_overlap"]
    lines = [
        (
            f"agreement  top-1 {'-' if agreement is None else f'{agreement:.1%}'} "
            f"({doc['top1_agreeing_rows']:,} of {rows['ok_in_both']:,} rows ok in both); "
            f"top-{doc.get('overlap_k') or TOP} overlap {'-' if overlap is None else f'{overlap:.1%}'}"
        )
    ]
    lines.append(
        "\nlabel transitions (base -> new)" if doc["label_transitions"] else "\nlabel transitions: none"
    )
    lines += [f"  {item['rows']:>10,}  {item['base']} -> {item['new']}" for item in doc["label_transitions"]]
    for title, key in (("labels gained", "labels_gained"), ("labels lost", "labels_lost")):
        lines.append(f"\n{title} (ok rows, base -> new)" if doc[key] else f"\n{title}: none")
        lines += [f"  {i['change']:>+10,}  {i['label']:<30} {i['base']:,} -> {i['new']:,}" for i in doc[key]]
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _cosine_lines(doc: dict[str, Any]) -> list[str]:
    cosine, neighbours = doc["cosine"], doc["neighbours"]
    spread = ", ".join(f"{name} {_number(value)}" for name, value in cosine["percentiles"].items())
    below, counted = cosine["below_threshold"], cosine["rows"]
    agreement = "-" if doc["agreement"] is None else f"{doc['agreement']:.1%}"
    nearest = "-" if neighbours["agreement"] is None else f"{neighbours['agreement']:.1%}"
    lines = [
        f"cosine     mean {_number(cosine['mean'])}, min {_number(cosine['min'])}; {spread}",
        (
            f"           {below:,} of {counted:,} rows ({_pct(below, counted)}) below "
            f"{cosine['threshold']:g}: agreement {agreement}"
        ),
        (
            f"neighbours the nearest other row is the same in both runs for {nearest} of a sample "
            f"of {neighbours['sample']:,} rows"
        ),
        "\nlowest cosine" if doc["lowest_cosine"] else "\nlowest cosine: none",
    ]
    return lines + [
        f"  {_number(row['cosine']):>8}  {row['uri']}" for row in doc["lowest_cosine"][:TEXT_EXAMPLES]
    ]
