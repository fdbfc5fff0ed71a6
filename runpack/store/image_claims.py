"""The claim of a runner that allows its container jobs only some images
(runpack.image_lists): CLAIM_BATCH's, whose pick also skips the container jobs whose
``image`` none of the runner's patterns matches.

SQLite matches with ``image_allowed(image, patterns)``, the runner's own matcher in
Python (registered on each connection by runpack.store.sqlite); PostgreSQL with one
regular expression that means the same (``image_regex``), in the C collation so that
ranges are by code point. The statement runs only for such runners:
the others claim with CLAIM_BATCH as before.
"""

from __future__ import annotations

from runpack.image_lists import CONTAINER
from runpack.store.dialect import Statement
from runpack.store.queries import _CLAIM_SET, _PICK, JOB_COLS

_ALLOWED = {
    "sqlite": "image_allowed(json_extract(jobs.input_params, '$.image'), :image_list)",
    # Only a string image matches, as on the runner (->> makes text of a number too).
    "postgres": "json_typeof(jobs.input_params::json -> 'image') = 'string'"
    " AND (jobs.input_params::json ->> 'image') COLLATE \"C\" ~ :image_regex",
}


def _pick(engine: str) -> str:
    kinds = "job_type {one_of[job_types]}"
    allowed = f"(job_type <> '{CONTAINER}' OR {_ALLOWED[engine]})"
    return _PICK.replace(kinds, f"{kinds}\n      AND {allowed}")


CLAIM_BATCH_IMAGES = Statement(
    sqlite=f"UPDATE jobs SET {_CLAIM_SET}\nWHERE id IN ({_pick('sqlite')})\nRETURNING {JOB_COLS}",
    postgres=(
        f"UPDATE jobs SET {_CLAIM_SET}\nWHERE id = ANY(ARRAY({_pick('postgres')}))\n"
        f"RETURNING {JOB_COLS}"
    ),
)
