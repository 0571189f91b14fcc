"""`earl edit`: edit one image with an editor."""

from __future__ import annotations

from earl.cli.common import add_sampling_args, check_image_out, schedule_flags
from earl.errors import EarlError
from earl.io import save_image


def _cmd_edit(args) -> None:
    # lazy: the pipeline loads torch and transformers
    from earl.pipeline import EditPipeline

    out = check_image_out(args.out)
    schedule, window = schedule_flags(args)
    pipe = EditPipeline.from_pretrained(args.model, revision=args.revision)
    res = pipe(args.image, args.instruction, num_samples=args.num_samples, guidance_scale=args.guidance_scale,
               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
               truncate_instruction=args.truncate_instruction, schedule=schedule, window=window)
    for i, im in enumerate(res.images):
        path = out if len(res.images) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        try:
            save_image(im, path)
        except OSError as e:
            raise EarlError(f"--out {args.out}: cannot write {path} ({e.strerror or e})") from None
        print(f"wrote {path}")
    print(f"forward passes: {res.forward_passes} ({res.tokens_per_pass:.2f} tokens per pass, schedule {schedule})")
    for t in res.thinking:
        if t is not None:
            print(f"thinking: {t}")


def register(sub) -> None:
    e = sub.add_parser("edit", help="edit one image")
    e.add_argument("--model", default=None, help="editor directory or Hub id org/name (default: the bundled checkpoint)")
    e.add_argument("--revision", default=None, help="with a Hub id: the branch, tag or commit hash to load")
    e.add_argument("--image", required=True)
    e.add_argument("--instruction", required=True)
    e.add_argument("--out", required=True, help="output image, its format from the extension: .png, .jpg, .webp, ... "
                                                "(with several samples: out_0.png, out_1.png, ...)")
    add_sampling_args(e)
    e.add_argument("--num-samples", type=int, default=1)
    e.add_argument("--top-k", type=int, default=0)
    e.add_argument("--top-p", type=float, default=1.0)
    e.add_argument("--truncate-instruction", action="store_true",
                   help="cut an instruction too long for the model to the longest prefix that fits (default: refuse it)")
    e.set_defaults(func=_cmd_edit)
