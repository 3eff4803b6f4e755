"""FixMatch (UniMatch's baseline, LiheYoung/UniMatch fixmatch.py): UniMatch's settings (configs/unimatch.py)."""

from configs.unimatch import SETTINGS  # noqa: F401
