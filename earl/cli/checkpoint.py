"""`earl checkpoint`: bundle an editor with a manifest, verify one, average several, merge LoRA adapters, push
one to the Hub."""

from __future__ import annotations

from pathlib import Path

from earl.checkpoint import pack_checkpoint, push_to_hub, verify_checkpoint
from earl.cli.common import named_paths
from earl.io import read_json


def _cmd_pack(args) -> None:
    evals = named_paths(args.eval, "--eval", "NAME=PATH/results.json")
    recipe = read_json(args.recipe_json) if args.recipe_json else None
    card = {"license": args.license, "base_model": args.base_model, "datasets": args.dataset}
    manifest = pack_checkpoint(args.model, args.out, name=args.name or Path(args.out).name, command=args.command,
                               recipe=recipe, evals=evals, max_bytes=int(args.max_mib * 2**20), card=card,
                               teacher_labels=read_json(args.teacher_labels) if args.teacher_labels else None)
    print(f"packed {len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB, into {args.out}")
    for name, m in manifest["metrics"].items():
        if "overall" in m:
            print(f"  {name}: success {m['overall']['success']:.3f} (n={m['overall'].get('n')})")
        else:
            print(f"  {name}: " + ", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in m["held_out"].items()))


def _cmd_verify(args) -> None:
    manifest = verify_checkpoint(args.dir)
    print(f"{args.dir}: {len(manifest['files'])} files match the manifest (commit {manifest.get('commit')})")


def _cmd_push(args) -> None:
    url = push_to_hub(args.dir, args.repo_id, private=args.private)
    print(f"pushed {args.dir} to {args.repo_id}: {url}")


def _cmd_average(args) -> None:
    # lazy: averaging loads torch
    from earl.averaging import average_editors

    out = average_editors(args.models, args.out, weights=args.weights)
    print(f"wrote {out}: the mean of {len(args.models)} models' backbones")


def _cmd_merge(args) -> None:
    # lazy: merging loads torch and peft
    from earl.train.lora import find_adapters, merge_adapters

    out = merge_adapters(args.source, args.out, base=args.base)
    print(f"wrote {out}: the adapters of {find_adapters(args.source)} merged into their base")


def register(sub) -> None:
    ck = sub.add_parser("checkpoint", help="checkpoints: bundle, verify, average, merge, push").add_subparsers(dest="what", required=True)
    cp = ck.add_parser("pack", help="copy an editor into a checkpoint directory with a manifest (sha256, metrics)")
    cp.add_argument("--model", required=True, help="editor directory (UnifiedEditor.save_pretrained)")
    cp.add_argument("--out", required=True, help="checkpoint directory to (re)write, e.g. checkpoints/shapes-editor")
    cp.add_argument("--name", default=None)
    cp.add_argument("--recipe-json", default=None, help="the training run's recipe.json (recorded in the manifest)")
    cp.add_argument("--teacher-labels", default=None, metavar="JSON",
                    help="a reward model's teacher labels (a JSON object, e.g. its run's teacher_labels.json), "
                         "recorded in the manifest")
    cp.add_argument("--eval", action="append", help="NAME=results.json of an `earl eval` run, or NAME=final_metrics.json of a "
                    "reward-model run (its held-out evaluation); repeatable")
    cp.add_argument("--command", default="", help="the command that re-makes this checkpoint")
    cp.add_argument("--max-mib", type=float, default=25.0, help="refuse a larger model")
    cp.add_argument("--license", default="unknown", help="the weights' license, for the model card (e.g. apache-2.0)")
    cp.add_argument("--base-model", default=None, help="Hub id of the model it was trained from, for the card")
    cp.add_argument("--dataset", action="append", default=None, help="Hub id of a training dataset, for the card; "
                    "repeatable")
    cp.set_defaults(func=_cmd_pack)
    cpu = ck.add_parser("push", help="verify a checkpoint (or an editor directory) and upload it to the Hugging Face "
                        "Hub with its model card (token: HF_TOKEN or `hf auth login`)")
    cpu.add_argument("dir")
    cpu.add_argument("repo_id", help="org/name of the model repository (created if absent)")
    cpu.add_argument("--private", action="store_true", default=None, help="a new repository is private")
    cpu.set_defaults(func=_cmd_push)
    cv = ck.add_parser("verify", help="check a checkpoint's files against its manifest")
    cv.add_argument("dir")
    cv.set_defaults(func=_cmd_verify)
    ca = ck.add_parser("average", help="the mean of the weights of editors fine-tuned from one start (model soup, "
                       "WARM): e.g. a GCPO run's last checkpoints, or several seeds")
    ca.add_argument("models", nargs="+", help="editor directories (at least two) sharing their tokenizers")
    ca.add_argument("--out", required=True, help="editor directory to (re)write")
    ca.add_argument("--weights", type=float, nargs="+", default=None, help="one positive weight per model "
                    "(normalised; default equal)")
    ca.set_defaults(func=_cmd_average)
    cm = ck.add_parser("merge", help="fold a LoRA run's adapters into their base model and write a full editor")
    cm.add_argument("source", help="a LoRA run directory (its model/, else its newest checkpoint), a checkpoint "
                    "step directory or an adapter directory")
    cm.add_argument("--out", required=True, help="editor directory to (re)write")
    cm.add_argument("--base", default=None, help="the base editor directory, where it moved since training (it "
                    "must be the one the adapters record: its weights are checked)")
    cm.set_defaults(func=_cmd_merge)
