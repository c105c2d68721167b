"""``optc sweep``: the accuracy/latency/size Pareto front over compression settings.

``space.py`` reads the search space (TOML), ``trial.py`` measures one point, ``driver.py``
searches (Optuna; serial or on Ray) and resumes, ``front.py`` writes and shows the front.
"""

from .driver import SweepOptions, SweepReport, sweep
from .front import pareto, show
from .space import Space, SpaceError, load_space, parse_space

__all__ = ["Space", "SpaceError", "SweepOptions", "SweepReport", "load_space", "pareto", "parse_space", "show", "sweep"]
