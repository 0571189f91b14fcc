"""ShapesEdit: a procedural image-editing domain with an exact oracle.

Scenes are plain data (`scene.Scene`), rendered exactly (`render.render`), edited by programs
with natural-language instructions (`edits`), written to disk as a `datasets`-readable dataset
(`dataset`), and judged by an oracle that parses images back into scenes (`oracle`).
"""
