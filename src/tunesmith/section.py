"""The base of every config section, below both `config` and the method modules that declare their own.

It lives apart from config.py because config assembles the `method:` union from the method modules,
and those modules need this base for their config models: both import it, neither imports the other
the wrong way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
