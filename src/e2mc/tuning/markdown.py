"""tune.md: the verdict and detection power first, then the paired differences per rung, the ranked
probes, the Kendall taus, the cost and the confirmation."""

from __future__ import annotations

from e2mc.tuning import power
from e2mc.tuning.probes import failed_text


def _fmt(v, pct=False) -> str:
    if v is None:
        return ""
    return f"{100 * v:.2f}" if pct else f"{v:.4g}"


def _iv(iv: dict | None) -> str:
    if iv is None:
        return ""
    return f"{100 * iv['diff']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]"


def verdict_line(res: dict) -> str:
    """The one-line verdict (tune.md's first paragraph, tune.html's headline box)."""
    text = f"Verdict: {res.get('verdict') or 'chosen ' + res['chosen']['label']}."
    if res.get("power"):
        text += f" Detection power: {power.describe(res['power'])}."
    return text


def _linear_cells(lab: str, ref, pr: dict, metrics: dict) -> str:
    """The linear probe's cells of a rung's row: accuracy %, minus base-only [95%], McNemar p ("-": not scored)."""
    iv = pr.get("linear_vs_base")
    acc = metrics.get("linear_top1")
    diff = _iv(iv) if iv else "reference" if lab == ref and acc is not None else "-"
    p = _fmt(iv["p"]) if iv else "" if diff == "reference" else "-"
    return f"{_fmt(acc, True) if acc is not None else '-'} | {diff} | {p}"


def paired_tables(res: dict) -> list[str]:
    """Per rung: each probe's kNN@20 and its paired difference to base-only and to the leader, and its
    linear probe's paired difference to base-only (a secondary check; "-" where not scored)."""
    if not any(r.get("paired") for r in res["rungs"]):
        return []
    ref = res.get("reference")
    by_steps = {p["label"]: p.get("metrics_by_steps") or {} for p in res["probes"]}
    lines = [
        "",
        "## Paired differences on the held-out images, per rung",
        "",
        f"kNN@20 points; probe minus `{ref}` (base-only) and minus the rung's leader, each with its 95% Wald "
        "interval over the same held-out images (difference of paired proportions) and McNemar's exact p. "
        "An interval that reaches zero: not distinguishable at this held-out size. Each interval is one "
        "comparison, not adjusted for how many probes are compared: with no true effect about 2.5% of the "
        "probes would still land above zero by chance, which the second training seed (and `--confirm`) guards against. "
        "Probes are selected by kNN@20 (primary); the linear columns (the linear probe's accuracy and its "
        "paired difference to base-only on the same images, same interval and test) are a secondary check "
        "that selects nothing.",
    ]
    for r in res["rungs"]:
        if not r.get("paired"):
            continue
        lines += [
            "",
            f"### Rung {r['rung']}: {len(r['probes'])} probe(s) at {r['epochs']:.3g} epochs ({r['steps']} steps); "
            f"leader `{r['leader']}`",
            "",
            "| probe | kNN@20 % | minus base-only [95%] | McNemar p | minus leader [95%] | linear % "
            "| linear minus base-only [95%] | linear McNemar p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lab in r["probes"]:
            if lab in (r.get("failed") or {}):  # diverged or stopped by the guard: no values
                lines.append(f"| {lab} | {failed_text(r['failed'][lab])} | - | - | - | - | - | - |")
                continue
            pr, sc = r["paired"].get(lab, {}), r["scores"].get(lab)
            vb = pr.get("vs_base")
            metrics = by_steps.get(lab, {}).get(str(r["steps"])) or {}
            lines.append(
                f"| {lab} | {_fmt(sc, True)} | {_iv(vb) if vb else 'reference' if lab == ref else ''} | "
                f"{_fmt(vb['p']) if vb else ''} | {_iv(pr.get('vs_leader')) or 'leader'} | "
                f"{_linear_cells(lab, ref, pr, metrics)} |"
            )
    return lines


def seed_table(res: dict) -> list[str]:
    """The last rung's leaders and base-only with each training seed: difference to base-only of that seed."""
    fs = res.get("final_seeds")
    if not fs:
        return []
    last, ref = res["rungs"][-1], res.get("reference")
    per = [(str(res["final_seeds"]["seeds"][0]), last)] + list(fs["per_seed"].items())
    head = " | ".join(f"seed {s}: kNN@20 % | seed {s}: minus base-only [95%]" for s, _ in per)
    lines = [
        "",
        f"## Training seeds at the last rung ({fs['steps']} steps)",
        "",
        "Each seed's probes against base-only trained with the same seed, paired over the held-out images; "
        "a probe is chosen only if its interval is above zero with every seed.",
        "",
        f"| probe | {head} |",
        "|---|" + "---|---|" * len(per),
    ]
    for lab in fs["probes"]:
        cells = []
        for _, r in per:
            if lab in (r.get("failed") or {}):
                cells += [failed_text(r["failed"][lab]), "-"]
                continue
            iv = (r["paired"].get(lab) or {}).get("vs_base")
            cells += [_fmt(r["scores"].get(lab), True), _iv(iv) if iv else "reference" if lab == ref else "-"]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return lines


def lr_table(res: dict) -> list[str]:
    """Which LR won for each add-on: its best-ranked probe (furthest rung, then score); failed probes
    are ignored, and an add-on whose every LR failed says so."""
    failed = res.get("failed") or []
    if len({p["overrides"].get("optim.lr") for p in res["probes"] + failed}) < 2:
        return []
    lines = ["", "## Best LR per add-on", "", "| add-on | probe | LR | rung | kNN@20 % |", "|---|---|---|---|---|"]
    seen = set()
    for p in res["probes"]:
        if p["addon"] in seen:
            continue
        seen.add(p["addon"])
        lr = p["overrides"].get("optim.lr")
        lr_text = "the recipe's" if lr is None else f"{lr:g}"
        knn = _fmt(p["metrics"].get("knn_top1_k20"), True)
        lines.append(f"| {p['addon']} | {p['label']} | {lr_text} | {p['rung']} | {knn} |")
    for addon in dict.fromkeys(f["addon"] for f in failed):
        if addon not in seen:  # every LR of this add-on failed
            seen.add(addon)
            kinds = {f["failed"]["kind"] for f in failed if f["addon"] == addon}
            what = "diverged at every LR" if kinds == {"diverged"} else "failed at every LR (diverged or guard-stopped)"
            lines.append(f"| {addon} | {what} | - | - | - |")
    return lines


def to_markdown(res: dict) -> str:
    """tune.md's text: verdict, power, chosen setting, paired tables, ranked probes, Kendall tau, cost, confirm."""
    ch = res["chosen"]
    lines = [
        f"# e2mc tune: `{res['checkpoint']}` on `{res['dataset']}`",
        "",
        f"**{verdict_line(res)}**",
        "",
        f"Selection `{res['select']}` on a seeded stratified held-out part of the TRAIN split "
        f"({res['heldout']['held_out']} of {res['heldout']['train_images']} images; the probes train on "
        f"{res['heldout']['probe_train']}); the test split is never read while tuning.",
        "",
        f"**Chosen: `{ch['label']}`** (rank {ch.get('rank', 1)} of {len(res['probes'])} by the selection score; "
        f"{ch['epochs']:.3g} epochs): "
        f"`{ch['overrides']}`.",
    ]
    if res.get("note"):
        lines += ["", f"Note: {res['note']}."]
    cols = ["knn_top1_k20", "linear_top1", "rankme", "entropy", "lidar", "alpha_req"]
    pct = {"knn_top1_k20", "linear_top1"}
    names = {
        "knn_top1_k20": "kNN@20 %",
        "linear_top1": "linear %",
        "rankme": "RankMe",
        "entropy": "entropy",
        "lidar": "LiDAR",
        "alpha_req": "alpha-ReQ",
    }
    lines += paired_tables(res)
    used = [c for c in cols if any(c in p["metrics"] for p in res["probes"]) or c in res["start"]]
    lines += [
        "",
        "## Probes (ranked: last rung first, then by score)",
        "",
        "| rank | probe | rung | epochs | " + " | ".join(names[c] for c in used) + " | score |",
        "|" + "---|" * (5 + len(used)),
    ]
    for p in res["probes"]:
        lines.append(
            f"| {p['rank']} | {p['label']} | {p['rung']} | {p['epochs']:.3g} | "
            + " | ".join(_fmt(p["metrics"].get(c), c in pct) for c in used)
            + f" | {_fmt(p['score'])} |"
        )
    for f in res.get("failed") or []:  # left out of the ranking
        lines.append(
            f"| - | {f['label']} | {f['rung']} | {f['epochs']:.3g} | "
            + " | ".join("-" for _ in used)
            + f" | {failed_text(f['failed'])} |"
        )
    lines.append(
        "| | start (no training) | | 0 | " + " | ".join(_fmt(res["start"].get(c), c in pct) for c in used) + " | |"
    )
    lines += seed_table(res)
    lines += lr_table(res)
    if res["kendall_tau"]:
        lines += [
            "",
            f"## Can label-free selection be trusted here? Kendall tau vs held-out kNN@20 "
            f"(rung 0: all {len(res['probes'])} probes at {res['rungs'][0]['epochs']:.3g} epochs)",
            "",
            "| metric (selection score) | tau | p | n |",
            "|---|---|---|---|",
        ]
        for m, t in res["kendall_tau"].items():
            shown = "-abs(alpha - 1)" if m == "alpha_req" else m
            if t.get("too_few", t["n"] < 5):  # no ranking of n < 5 probes reaches p < 0.05
                lines.append(f"| {shown} | too few probes | | {t['n']} |")
            else:
                lines.append(f"| {shown} | {_fmt(t['tau'])} | {_fmt(t['p'])} | {t['n']} |")
    c = res["cost"]
    lines += [
        "",
        "## Cost",
        "",
        f"Schedule (eta {res['eta']}): "
        + "; ".join(
            f"rung {s['rung']}: {len(res['rungs'][s['rung']]['probes'])} probe(s) (planned {s['probes']}) to "
            f"{s['steps']} steps = {s['steps'] / res['batches_per_epoch']:.3g} "
            "epochs"
            for s in res["schedule"]
        )
        + ".",
    ]
    if (res.get("power") or {}).get("first_rung"):
        lines.append(f"First rung: {res['power']['first_rung']}.")
    n_failed = len(res.get("failed") or [])
    lines += [
        f"Trained {c['trained_epochs']:.3g} epochs of probe data"
        + (f" (the {n_failed} failed probe(s) included)" if n_failed else "")
        + f" = {100 * c['fraction_of_full_grid']:.1f}% of "
        f"the full grid's {c['full_grid_epochs']:.3g}"
        + (
            f", over the planned {c['planned_epochs']:.3g} (--budget plans the schedule: a rung keeps every probe "
            "it cannot tell from the leader: its paired interval to the leader contains zero)"
            if c.get("planned_epochs") is not None and c["trained_epochs"] > c["planned_epochs"] + 1e-9
            else ""
        )
        + f"; probe training {c['probe_train_seconds']:.0f} s, "
        f"scoring {c['probe_eval_seconds']:.0f} s (cumulative over invocations); this invocation "
        f"{res.get('wall_seconds', 0):.0f} s.",
    ]
    extra = []
    if res.get("power"):
        pw = res["power"]
        extra.append(f"the power pilot (2 base-only probes to {pw['pilot_steps']} steps) {pw['train_seconds']:.0f} s")
    if res.get("final_seeds"):
        fs = res["final_seeds"]
        extra.append(
            f"the extra training seeds {fs['trained_epochs']:.3g} epochs of probe data, {fs['train_seconds']:.0f} s"
        )
    if extra:
        lines.append("Besides: " + "; ".join(extra) + ".")
    if res.get("confirm"):
        cf = res["confirm"]
        lines += [
            "",
            f"## Confirmation on the test split ({cf['seeds']} training seeds, full train split, "
            f"{cf['epochs']:.3g} epochs)",
            "",
        ]
        if cf["arm"] != ch["label"]:
            lines += [
                f"The chosen setting is base-only, so the best add-on probe `{cf['arm']}` is confirmed against it.",
                "",
            ]
        lines += [cf["markdown"].rstrip(), "", cf["verdict"]]
    return "\n".join(lines) + "\n"
