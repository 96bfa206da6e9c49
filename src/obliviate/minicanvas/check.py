"""Moved to obliviate.evaluate.minicanvas_card (it measures with the evaluator, so it sits
above minicanvas/). This name stays only until cli.py imports the new one."""
from ..evaluate.minicanvas_card import *  # noqa: F401,F403
from ..evaluate.minicanvas_card import check  # noqa: F401
