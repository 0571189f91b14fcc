"""`earl convert`: write checkpoints of other formats as earl editors."""

from __future__ import annotations


def _cmd_emu3(args) -> None:
    # lazy: the converter loads torch and safetensors
    from earl.model import UnifiedEditor

    cot = {"auto": None, "yes": True, "no": False}[args.cot]
    editor = UnifiedEditor.from_pretrained(args.model, vision_tokenizer=args.vision_tokenizer, cot=cot,
                                           image_area=args.image_area, revision=args.revision)
    out = editor.save_pretrained(args.out)
    print(f"wrote {out}: an earl editor (chain-of-thought {'on' if editor.config.cot else 'off'}, EARL's sequence "
          "order)")


def register(sub) -> None:
    conv = sub.add_parser("convert", help="write other formats as earl editors").add_subparsers(dest="what",
                                                                                              required=True)
    ce = conv.add_parser("emu3", help="an Emu3 checkpoint in BAAI's original format (EARL's released editors), "
                         "read without remote code")
    ce.add_argument("--model", required=True, help="the decoder directory or its Hub id (config.json model_type 'Emu3', "
                    "safetensors, emu3.tiktoken, emu3_vision_tokens.txt)")
    ce.add_argument("--revision", default=None, help="with a Hub id as --model: the branch, tag or commit hash")
    ce.add_argument("--vision-tokenizer", required=True, help="the BAAI/Emu3-VisionTokenizer directory or Hub id")
    ce.add_argument("--out", required=True, help="editor directory to write")
    ce.add_argument("--cot", choices=["auto", "yes", "no"], default="auto",
                    help="chain-of-thought editor; auto: when the model's name says 'thinking'")
    ce.add_argument("--image-area", type=int, default=None, help="pixels of area images are resized to "
                    "(default 65536, EARL's 256x256)")
    ce.set_defaults(func=_cmd_emu3)
