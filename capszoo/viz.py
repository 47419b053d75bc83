"""capszoo's pictures (public names): reconstruction panels, pose-tweak grids, feature-space plots,
routing pictures, the summary graphic and training curves, drawn with matplotlib
(``pip install 'capszoo[viz]'``), imported on first use.  See :mod:`capszoo._visualize`."""
from ._visualize import *  # noqa: F401,F403
from ._visualize import __all__  # noqa: F401
