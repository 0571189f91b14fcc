"""`earl study`: train and evaluate several recipes over seeds, one table with intervals."""

from __future__ import annotations

from pathlib import Path

from earl.config import load_config


def _cmd_study(args) -> None:
    # lazy: the study trains and evaluates, so it loads torch and transformers
    from earl.study import StudyRecipe, run_study, select_arms

    cfg = load_config(StudyRecipe, args.recipe, args.overrides)
    if args.arms:
        cfg = select_arms(cfg, [a.strip() for a in args.arms.split(",") if a.strip()])
    run_study(cfg, progress=not args.no_progress)
    out = Path(cfg.out_dir)
    print((out / "report.md").read_text())
    print(f"results: {out / 'results.json'}; curves: {out / 'curves.png'}")


def register(sub) -> None:
    st = sub.add_parser("study", help="train and evaluate several recipes over seeds; a table with 95%% CIs (resumable)")
    st.add_argument("recipe", help="study YAML, e.g. recipes/shapes/study.yaml")
    st.add_argument("overrides", nargs="*", help="key=value overrides of the study's fields")
    st.add_argument("--arms", default=None, metavar="A,B",
                    help="run only these arms (and the arms they start from), e.g. to re-run one elsewhere")
    st.add_argument("--no-progress", action="store_true", help="no progress bars")
    st.set_defaults(func=_cmd_study)
