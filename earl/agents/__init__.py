"""Multi-agent editing (ImageEdit-R1): decomposer -> sequencer -> editor, optionally closed-loop.

`earl.agents.plan` (steps, the strict parser, F1), `decomposer`, `sequencer`, `editor`, `checks`
(per-step verification), `pipeline` (`AgentPipeline`), `unified` (earl's own decomposer model),
`shapes` (ShapesEdit programs as plans), `rewards` (trl reward functions), `evaluate`.
"""
