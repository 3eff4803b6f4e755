"""ST++ (Yang et al., CVPR 2022): ST's settings (configs/st.py); reliable images are the top half."""

from configs.st import SETTINGS  # noqa: F401
