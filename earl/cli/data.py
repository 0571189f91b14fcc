"""`earl data`: generate or prepare datasets (ShapesEdit, tokenized shards, reward-model traces, on-policy
verifier data)."""

from __future__ import annotations

from pathlib import Path

from earl.cli.common import named_paths
from earl.config import load_config
from earl.errors import EarlError
from earl.records import RecordSpec
from earl.verify.chat import build_chat_backend


def _cmd_shapes(args) -> None:
    # lazy: the dataset writer loads datasets and pyarrow
    from earl.shapes.dataset import write_dataset

    out = write_dataset(args.out, split=args.split, n=args.n, seed=args.seed, part=args.part, image_size=args.size)
    print(f"wrote {args.n} {args.split}/{args.part} samples to {out}")
    if args.push_to_hub:
        from earl.shapes.publish import push_dataset  # lazy: huggingface_hub

        print(f"pushed {out} to {args.push_to_hub}: {push_dataset(out, args.push_to_hub, private=args.private)}")


def _cmd_tokenize(args) -> None:
    # lazy: the editor and the shard writer load torch and transformers
    from earl.model import UnifiedEditor
    from earl.shards import tokenize_dataset

    spec = load_config(RecordSpec, args.spec, args.overrides)
    editor = UnifiedEditor.from_pretrained(args.model)
    m = tokenize_dataset(spec, editor, args.out, shard_size=args.shard_size, limit=args.limit)
    print(f"{args.out}: {m['records']} records in {len(m['shards'])} shards; {len(m['skipped'])} skipped "
          f"(reasons in {Path(args.out) / 'manifest.json'}). Train on it with data.train=[tokenized:{args.out}]")


def _cmd_verifier(args) -> None:
    # lazy: the builder loads torch, the reward model's image tokenizer and the principle writer
    from earl.agents.build import load_writer
    from earl.train.verifier_data import OracleTeacher, VerifierDataBuilder, trace_format
    from tokenizer.vq import VQTokenizer

    origins = named_paths(args.images, "--images", "NAME=DIR (an `earl eval shapes` OUT/images folder)")
    writer = "exact" if args.writer == "exact" else load_writer(args.writer)
    rrm = Path(args.rrm)
    if not (rrm / "image_tokenizer").is_dir():
        raise EarlError(f"--rrm {rrm}: no image_tokenizer/ (expected a reward model directory)")
    builder = VerifierDataBuilder(writer, VQTokenizer.from_pretrained(rrm / "image_tokenizer"),
                                  OracleTeacher(noise=args.teacher_noise, fail_rate=args.teacher_fail_rate,
                                                seed=args.seed),
                                  trace_format(rrm), budget=args.budget, chunk=args.chunk, point_seed=args.seed)
    m = builder.build(args.data, origins, args.out)
    print(f"{args.out}: {m['labels']} images labelled by the {m['teacher']['name']} teacher (noise "
          f"{m['teacher']['noise']}), {m['point_labels']} point labels of which {m['point_labels_wrong']} wrong, "
          f"{m['failing_points']} failing; failures {m['failures'] or 'none'}; per origin {m['per_origin']}")


def _cmd_rrm_traces(args) -> None:
    # lazy: the trace writer brings in earl.rrm (principles, cold start, the ShapesEdit oracle), ~0.1 s
    from earl.rrm.real_traces import TraceOptions, write_real_traces

    def backend(url, model):
        return build_chat_backend("openai", base_url=url, model=model, timeout=args.timeout,
                                  max_connections=args.concurrency)

    verifier = backend(args.verifier_base_url, args.verifier_model)
    principles = (backend(args.principles_base_url, args.principles_model) if args.principles_base_url
                  else verifier)
    counts = write_real_traces(args.pairs, args.out, backend(args.writer_base_url, args.writer_model), verifier,
                               principles, args.principle_cache,
                               TraceOptions(n=args.n, temperature=args.temperature, retries=args.retries,
                                            concurrency=args.concurrency))
    print(f"{args.out}: {counts['written']} traces written, {counts['skipped_done']} already there, "
          f"{counts['failed']} failed (see {Path(args.out).with_suffix('.failed.jsonl')}; a re-run retries them) "
          f"of {counts['images']} images")


def register(sub) -> None:
    data = sub.add_parser("data", help="generate or prepare datasets").add_subparsers(dest="what", required=True)
    d = data.add_parser("shapes", help="write a ShapesEdit dataset (parquet, readable by datasets.load_dataset)")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--n", type=int, required=True, help="number of samples")
    d.add_argument("--split", choices=["simple", "complex"], default="simple")
    d.add_argument("--part", choices=["train", "test"], default="train",
                   help="test = the fixed test set of the split (its seed is reserved; --seed is ignored)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 4 × 8)")
    d.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="then upload the folder as the Hugging Face dataset REPO_ID (token: HF_TOKEN)")
    d.add_argument("--private", action="store_true", default=None, help="with --push-to-hub: a new repository is private")
    d.set_defaults(func=_cmd_shapes)

    dt = data.add_parser("tokenize", help="encode an edit dataset into shards of codes once (for training)")
    dt.add_argument("spec", help="dataset field spec YAML, e.g. recipes/data/magicbrush.yaml")
    dt.add_argument("overrides", nargs="*", help="key=value overrides of the spec, e.g. path=/data/MagicBrush")
    dt.add_argument("--model", required=True, help="the editor whose preprocessing and image tokenizer to use")
    dt.add_argument("--out", required=True, help="shard directory (resumable)")
    dt.add_argument("--shard-size", type=int, default=1000)
    dt.add_argument("--limit", type=int, default=0, help="stop after N records (0 = all)")
    dt.set_defaults(func=_cmd_tokenize)

    dv = data.add_parser("verifier", help="on-policy data for the reward model: traces on images an editor or agent "
                                          "wrote for a ShapesEdit set, labelled by a teacher (resumable)")
    dv.add_argument("--data", required=True, help="the ShapesEdit set the images were written for")
    dv.add_argument("--images", required=True, action="append", metavar="NAME=DIR",
                    help="the origin name a folder of {id}.png (an `earl eval shapes` OUT/images) is counted under, "
                         "and the folder (repeatable)")
    dv.add_argument("--rrm", default="checkpoints/shapes-rrm-lenient",
                    help="the reward model the data is for: its image tokenizer and trace format")
    dv.add_argument("--writer", default="plan", metavar="plan|plan:DIR|DIR|exact",
                    help="who writes each (source, instruction)'s points: a principle writer, as at test time, "
                         "or exact: the scene-graph points")
    dv.add_argument("--teacher-noise", type=float, default=0.0,
                    help="the teacher's error rate: each verdict flipped with this probability")
    dv.add_argument("--teacher-fail-rate", type=float, default=0.0,
                    help="the share of teacher calls that fail (a simulated annotator or server error; counted)")
    dv.add_argument("--budget", type=int, default=0, help="the most teacher labels (images judged) to spend (0: all)")
    dv.add_argument("--chunk", type=int, default=32, help="images per shard (the unit of resumption)")
    dv.add_argument("--seed", type=int, default=0)
    dv.add_argument("--out", required=True, help="output folder (shards/*.jsonl + manifest.json; a rerun resumes)")
    dv.set_defaults(func=_cmd_verifier)

    drt = data.add_parser("rrm-traces", help="cold-start traces for a reward model on real edits (VLM writer + "
                                             "stronger VLM verifier, best-agreeing trace kept; resumable)")
    drt.add_argument("--pairs", required=True, help="pair file (jsonl: source, instruction, image_a, image_b, preferred)")
    drt.add_argument("--out", required=True, help="jsonl to append to (re-runs skip what is there)")
    drt.add_argument("--writer-base-url", required=True, help="OpenAI-compatible server of the trace-writing VLM")
    drt.add_argument("--writer-model", default=None)
    drt.add_argument("--verifier-base-url", required=True, help="server of the stronger VLM whose verdicts are the labels")
    drt.add_argument("--verifier-model", default=None)
    drt.add_argument("--principles-base-url", default=None, help="server for the 10 principles (default: the verifier)")
    drt.add_argument("--principles-model", default=None)
    drt.add_argument("--principle-cache", default="runs/principles")
    drt.add_argument("-n", type=int, default=4, help="candidate traces per image")
    drt.add_argument("--temperature", type=float, default=1.0)
    drt.add_argument("--retries", type=int, default=2)
    drt.add_argument("--concurrency", type=int, default=8)
    drt.add_argument("--timeout", type=float, default=120.0)
    drt.set_defaults(func=_cmd_rrm_traces)
