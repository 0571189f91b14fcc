"""`earl serve`: servers."""

from __future__ import annotations


def _cmd_judge(args) -> None:
    # lazy: the server loads fastapi and uvicorn, and its model torch and transformers
    from earl.serve.judge import serve_judge

    serve_judge(args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                api_key=args.api_key)


def register(sub) -> None:
    serve = sub.add_parser("serve", help="servers").add_subparsers(dest="what", required=True)
    sj = serve.add_parser("judge", help="serve a local image-text-to-text model via the OpenAI chat-completions API")
    sj.add_argument("--model", required=True, help="local model directory (AutoModelForImageTextToText + processor)")
    sj.add_argument("--port", type=int, required=True)
    sj.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    sj.add_argument("--max-batch", type=int, default=8, help="most requests answered by one batched generate")
    sj.add_argument("--max-wait-ms", type=float, default=5.0, help="how long to collect requests for a batch")
    sj.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 routes (default: "
                                                    "$EARL_API_KEY; prefer the variable, arguments show in ps)")
    sj.set_defaults(func=_cmd_judge)
