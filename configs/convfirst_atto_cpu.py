"""ConvFirst-atto at 64 px on the CPU (the smallest ConvFirst; Lavin 2024, Sec. 3); the main job."""

from __future__ import annotations

import ml_collections

from configs import cpu_small


def get_config() -> ml_collections.ConfigDict:
    c = cpu_small.get_config()
    c.model = "convfirst_atto"
    return c
