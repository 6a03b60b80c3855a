"""Range types of user-facing options that jsonargparse does not ship, for every task's signatures.

An option declared with a range type (``lr: PositiveFloat``, ``layer_decay: LeftOpenUnitInterval | None``) is
checked by jsonargparse when the command line parses a config, before anything is built or written, and a value
outside the range is one ``error:`` line naming the option (``convnext_pl.errors.parser_error_line``). Python
callers pass plain numbers; relations between options (``min_lr <= lr``) are checked by hand where the options
meet. jsonargparse's own types cover the rest: ``PositiveInt``, ``NonNegativeInt``, ``PositiveFloat``,
``NonNegativeFloat``, ``ClosedUnitInterval`` [0, 1] and ``OpenUnitInterval`` (0, 1).

jsonargparse registers one name per range (a second name for the same restrictions is refused), so each range is
defined once, here, under a name that says the range rather than one option.
"""

from jsonargparse.typing import restricted_number_type

# (0, 1]: a factor that may keep everything but not remove it (layer decay, where 1 is no decay; crop_pct).
LeftOpenUnitInterval = restricted_number_type("LeftOpenUnitInterval", float, [(">", 0), ("<=", 1)])
# [0, 1): a share that may be zero but not all (label smoothing, where 1 would leave no signal).
RightOpenUnitInterval = restricted_number_type("RightOpenUnitInterval", float, [(">=", 0), ("<", 1)])
