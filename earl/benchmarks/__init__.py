"""Benchmark runners for real-image editing: GEdit-Bench (`gedit`) and ImgEdit-Bench (`imgedit`)."""
