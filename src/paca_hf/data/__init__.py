"""Data shipped with paca-hf: label maps (JSON) and the synthetic scene-parsing set (`scenes`)."""
