"""Runpack runner daemon: receives jobs from a Runpack server and runs them.

The handler API (see :mod:`runpack_runner.handler`)::

    from runpack_runner import JobContext, JobHandler, job
"""

from runpack_runner.context import Cancelled, JobContext
from runpack_runner.handler import JobHandler, job

__version__ = "0.1.0"

__all__ = ["Cancelled", "JobContext", "JobHandler", "__version__", "job"]
