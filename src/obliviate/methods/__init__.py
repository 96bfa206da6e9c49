"""Base unlearning methods, registered by name. Adding one: a new file plus one line here."""
from .conabl import ConAbl
from .erasediff import EraseDiff
from .esd import ESD
from .rece import RECE
from .sculpmem import SculpMem
from .speed import SPEED
from .speed_rece import SpeedRECE
from .speed_repair import SpeedRepair
from .uce import UCE
from .uce_null import UCENull

METHODS = {m.name: m for m in (ConAbl, ESD, SculpMem, EraseDiff, UCE, RECE, UCENull, SPEED, SpeedRepair, SpeedRECE)}


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]
