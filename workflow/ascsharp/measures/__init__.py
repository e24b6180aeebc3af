"""Measures beyond the landscape. MEASURES is the one list of their names: the blocks of the
config's `measures` section that can be switched on (the schema's), without importing torch."""

from ascsharp.core.settings import switchable

MEASURES = switchable("measures")
