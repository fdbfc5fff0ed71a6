"""Publishing a figpack figure from a handler: to the Runpack server, or figpack's cloud.

By default the view is saved with figpack (``view.save(folder)``, which bundles
figpack's viewer, so the figure needs nothing from the internet) and the folder
is uploaded to the server holding the job; the URL returned is the figure's
``index.html`` there. With ``FIGPACK_API_KEY`` in the runner's environment the
figure goes to figpack's cloud instead, through figpack's own upload, as the
original runner did. figpack is imported by the caller, never here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from runpack_runner.context import JobContext

#: figpack's own variable: when set, figures go to figpack's cloud.
FIGPACK_API_KEY = "FIGPACK_API_KEY"


def publish_figure(ctx: JobContext, view: Any, *, title: str, description: str = "") -> str:
    """Save ``view`` and make it reachable; its ``figpack_url`` (…/index.html)."""
    if os.environ.get(FIGPACK_API_KEY):
        ctx.log("Uploading the figure to figpack's cloud (FIGPACK_API_KEY is set)...")
        url = view.show(
            title=title,
            description=description,
            upload=True,
            open_in_browser=False,
            inline=False,
            wait_for_input=False,
        )
        ctx.log(f"Figure uploaded: {url}")
        return str(url)
    with tempfile.TemporaryDirectory(prefix="runpack-figure-") as tmp:
        folder = Path(tmp) / "figure"
        ctx.log("Saving the figure...")
        view.save(str(folder), title=title, description=description)
        url = ctx.upload_folder(folder)
    ctx.log(f"Figure stored: {url}")
    return url
