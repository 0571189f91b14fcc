"""`earl app`: a web UI for editing (Gradio, an optional extra)."""

from __future__ import annotations

from earl.errors import EarlError


def _cmd_app(args) -> None:
    # lazy: gradio is optional (the app extra); its absence is a usage error, not a traceback
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise EarlError('earl app needs gradio: pip install -e ".[app]"') from None
    # lazy: the app loads gradio, torch and transformers
    from earl.app import serve

    serve(args.model, agent=args.agent, host=args.host, port=args.port)


def register(sub) -> None:
    ap = sub.add_parser("app", help="a web UI for editing (Gradio; needs the app extra)")
    ap.add_argument("--model", default=None, help="editor directory (default: the bundled checkpoint)")
    ap.add_argument("--agent", action="store_true", help="edit through the multi-agent pipeline (bundled decomposer)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    ap.set_defaults(func=_cmd_app)
