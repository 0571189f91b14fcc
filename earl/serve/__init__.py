"""Servers: `earl serve judge` (a local VLM behind an OpenAI-compatible chat-completions API)."""
