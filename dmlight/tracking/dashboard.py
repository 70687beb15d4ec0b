"""A W&B workspace that shows the papers: `python -m dmlight.dashboard --project P [--entity E]`.

Runs are grouped by model (config `model_name`; by W&B group, i.e. experiment, then model when the workspace
spans several experiments), so every panel draws the mean over seeds with a min-max band:

    Learning curves                 train/loss (log y), train/acc, test/acc against the epoch
    USE: accuracy under perturbation    scale, clip (log x) and offset against the magnitude, training set
    LEARN: test accuracy by model   final test/acc per model, mean and standard deviation over seeds
    Report                          the report run's scorecard table (python -m dmlight.report ... report.wandb=true)
    Beyond the papers               the report run's study table: a verdict per setting and layer

With a W&B account (`wandb login`) and network it saves the workspace and prints its URL. Without them it
writes the workspace spec it would save as JSON (--out) and says how to push it later: rerun the same
command once logged in. The keys come from dmlight.tracking.wandb_log, where the runs' keys are defined.

Examples:
    python -m dmlight.dashboard --project dmlight --entity my-team
    python -m dmlight.dashboard --project dmlight --experiment use_distance_metrics --offline
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmlight.tracking.loggers import wandb_mode
from dmlight.published import EXPERIMENT_ORDER, KIND_CODE, USE_KINDS
from dmlight.tracking.wandb_log import LEARNING_CURVES, SCORECARD, STEP, accuracy_key, magnitude_key, table_key

BAND = {"group_agg": "mean", "group_area": "minmax"}
TITLES = {"train/loss": "training loss", "train/acc": "training accuracy", "test/acc": "test accuracy"}


def panels() -> list[dict]:
    """The dashboard's panels, one dict each: section, type, title, x, y and axis/grouping options.

        >>> [p["title"] for p in panels() if p["section"].startswith("USE")]
        ['USE: scale (intensity)', 'USE: clip (intensity)', 'USE: offset (distance)']
    """
    out = [{"section": "Learning curves", "type": "line", "title": f"{TITLES[key]} (mean, min-max over seeds)",
            "x": STEP, "y": [key], "title_x": "epoch", "log_y": key == "train/loss", **BAND}
           for key in LEARNING_CURVES]
    out += [{"section": "USE: accuracy under perturbation (training set)", "type": "line",
             "title": f"USE: {kind} ({KIND_CODE[kind]})", "x": magnitude_key(kind), "y": [accuracy_key(kind, "train")],
             "title_x": f"{kind} magnitude p", "title_y": "training accuracy", "log_x": kind != "offset", **BAND}
            for kind in USE_KINDS]
    out.append({"section": "LEARN: test accuracy by model", "type": "bar",
                "title": "LEARN: test accuracy by model (mean, std over seeds)", "y": ["test/acc"],
                "group_agg": "mean", "group_area": "stddev"})
    out.append({"section": "Report", "type": "table", "title": "scorecard: each claim of the papers",
                "y": [SCORECARD]})
    out.append({"section": "Beyond the papers", "type": "table",
                "title": "study: verdict per setting and layer (make study-quick; docs/study.md)",
                "y": [table_key("study")]})
    return out


def _panel(p: dict):
    import wandb_workspaces.reports.v2 as wr

    if p["type"] == "line":
        return wr.LinePlot(title=p["title"], x=p["x"], y=p["y"], title_x=p.get("title_x"), title_y=p.get("title_y"),
                           log_x=p.get("log_x") or None, log_y=p.get("log_y") or None,
                           groupby_aggfunc=p["group_agg"], groupby_rangefunc=p["group_area"])
    if p["type"] == "bar":
        return wr.BarPlot(title=p["title"], metrics=p["y"], orientation="v",
                          groupby_aggfunc=p["group_agg"], groupby_rangefunc=p["group_area"])
    return wr.WeavePanelSummaryTable(table_name=p["y"][0], layout=wr.Layout(w=24, h=12))


def workspace(project: str, entity: str | None = None, experiments=(), name: str | None = None):
    """The wandb_workspaces Workspace of `panels()` for the runs of `experiments` (W&B groups; all when
    empty) and the report runs, grouped by model.

        >>> ws = workspace("dmlight", "my-team", ["use_distance_metrics"])  # doctest: +SKIP
        >>> ws.save()                                                         # doctest: +SKIP
    """
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    experiments = list(experiments)
    sections = []
    for p in panels():
        if not sections or sections[-1].name != p["section"]:
            sections.append(ws.Section(name=p["section"], panels=[], is_open=True))
        sections[-1].panels.append(_panel(p))
    # One experiment: group by model. Several: by experiment (the W&B group), then model, as names repeat
    # across experiments (USE's ReLU_Bias is not learn_bias's).
    groupby = [expr.Config("model_name")] if len(experiments) == 1 else [expr.Metric("Group"), expr.Config("model_name")]
    filters = (expr.Or(expr.Metric("Group").isin(experiments), expr.Metric("JobType") == "report")
               if experiments else "")
    return ws.Workspace(entity=entity or "", project=project,
                        name=name or f"dmlight: {', '.join(experiments) or 'all experiments'}",
                        sections=sections,
                        settings=ws.WorkspaceSettings(max_runs=100, point_visualization_method="bucketing"),
                        runset_settings=ws.RunsetSettings(filters=filters, groupby=groupby))


def spec(w) -> dict:
    """What `Workspace.save()` would send: the view spec as JSON-ready data, beside a readable panel list."""
    return {"entity": w.entity or None, "project": w.project, "name": w.name,
            "filters": str(w.runset_settings.filters or ""),
            "groupby": [f"{type(g).__name__}({g.name!r})" for g in w.runset_settings.groupby],
            "panels": panels(),
            "spec": w._to_model().spec.model_dump(mode="json", by_alias=True, exclude_none=True)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmlight.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True, help="W&B project of the runs (logger.wandb.project)")
    parser.add_argument("--entity", default=None, help="W&B user or team (default: your default entity)")
    parser.add_argument("--experiment", action="append", default=[], choices=EXPERIMENT_ORDER + ("default",),
                        help="only this experiment's runs (repeatable; default: all)", metavar="NAME")
    parser.add_argument("--name", default=None, help="the workspace's name")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the spec goes when it is not saved (default outputs/dashboard/<project>.json)")
    parser.add_argument("--offline", action="store_true", help="write the spec only, even with an account")
    args = parser.parse_args(argv)
    w = workspace(args.project, args.entity, args.experiment, args.name)
    out = args.out or Path("outputs/dashboard") / f"{'-'.join([args.project, *args.experiment])}.json"
    mode = wandb_mode()
    if mode == "online" and not args.offline:
        try:
            if not w.entity:
                import wandb

                w.entity = wandb.Api().default_entity
            w.save()
            print(f"dashboard saved: {w.url}")
            return 0
        except Exception as e:  # noqa: BLE001  (no network, no access: the spec is written instead)
            why = f"could not save the workspace ({type(e).__name__}: {e})"
    else:
        why = "--offline" if args.offline else f"no W&B account or network (mode {mode})"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec(w), indent=1) + "\n")
    again = " ".join(["python -m dmlight.dashboard", "--project", args.project,
                      "--entity", args.entity or "<your entity>", *(f"--experiment {e}" for e in args.experiment)])
    print(f"{why}: wrote the workspace spec to {out} ({len(panels())} panels in "
          f"{len({p['section'] for p in panels()})} sections).\nTo create it in W&B: `wandb login`, sync the runs "
          f"(`make wandb-sync RUNS=outputs`), then run `{again}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
