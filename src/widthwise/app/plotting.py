"""Matplotlib without pyplot: every plot draws on its own :class:`~matplotlib.figure.Figure`.

No backend is chosen (``matplotlib.use``) and no figure enters pyplot's registry, so writing a plot from a
notebook or a GUI leaves its backend and open figures alone; :func:`widthwise.app.atomic.atomic_savefig`
renders the figure by its file type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure


def figure(**kwargs: Any) -> Figure:
    """A new figure outside pyplot (``kwargs`` go to :class:`~matplotlib.figure.Figure`: ``figsize``, ``layout``)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, layout: str | None = None,
             **kwargs: Any) -> tuple[Figure, Any]:
    """Like ``pyplot.subplots`` on a new :func:`figure`: ``(figure, axes)``; ``kwargs`` go to ``Figure.subplots``."""
    fig = figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colormap(name: str) -> Colormap:
    """The registered colormap ``name`` (``viridis``, ``tab10``, ...)."""
    import matplotlib

    return matplotlib.colormaps[name]
