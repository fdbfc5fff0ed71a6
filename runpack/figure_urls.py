"""Figure URLs: where figures are handed out, which URLs name a figure stored here,
and when a request belongs on the figure origin (:mod:`runpack.artifacts`).

A figure's URL is ``<prefix><job_id>/<version>/<path>``; the prefix is the figure
base URL's ``/figures/`` when figures have an origin of their own, else the public
URL's. A URL under either names a figure of this server (older results keep theirs).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from runpack.figure_disk import is_job_id


def authority(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, the port made explicit; None if it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


class FigureUrls:
    """The URLs of a server's figures, from its public URL and figure base URL."""

    def __init__(self, public_url: str, figure_url: str = "") -> None:
        main = public_url.rstrip("/")
        #: The origin of figures when it is not the public URL's, else None.
        self.figure_origin = figure_url.rstrip("/") or None
        if self.figure_origin is not None:
            if not self.figure_origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"figure_base_url must start with http:// or https://: {figure_url}"
                )
            figure_host = authority(self.figure_origin)
            if figure_host is None or figure_host == authority(main):
                why = "must name another host (or port) than the public URL"
                raise ValueError(f"figure_base_url {why}: {figure_url}")
        #: Where figures are handed out.
        self.prefix = (self.figure_origin or main) + "/figures/"
        #: Where a figure URL of this server may point (older results keep theirs).
        self.prefixes = tuple(dict.fromkeys((self.prefix, main + "/figures/")))
        self._main = authority(main)
        self._main_scheme = urlsplit(main).scheme

    def base_url(self, job_id: str, version: str) -> str:
        return f"{self.prefix}{job_id}/{version}/"

    def job_of_url(self, url: str) -> str | None:
        """The job whose stored figure ``url`` names, if it is one of ours."""
        for prefix in self.prefixes:
            if url.startswith(prefix):
                job_id = url[len(prefix) :].split("/", 1)[0]
                return job_id if is_job_id(job_id) else None
        return None

    def moved_to_figure_origin(self, host: str | None, target: str) -> str | None:
        """The URL on the figure origin for a request of ``target`` (path and query)
        that reached the public URL's host, when figures have an origin of their own.
        Requests on any other host (the figure host itself, or a proxy's name for the
        server) are served where they are: a redirect could never loop."""
        if self.figure_origin is None or self._main is None or not host:
            return None
        if authority(f"{self._main_scheme}://{host}") != self._main:
            return None
        return self.figure_origin + target
