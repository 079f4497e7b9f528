"""Running cases on ranks: `parent/` (plan, launch, watch, judge, store: no model work)
and `rank/` (what runs models), speaking `protocol` (the one module both sides import)."""
