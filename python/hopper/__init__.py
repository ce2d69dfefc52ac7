"""hopper: a PostgreSQL job queue whose behaviour lives in versioned SQL."""

from hopper._migrate import MigrationError, migrate
from hopper._options import JobSpec, batch_ref, parse_duration
from hopper._producer import add_job, add_jobs, quick_add_job
from hopper._records import Job, JobState, Outcome

__all__ = [
    "Job",
    "JobSpec",
    "JobState",
    "MigrationError",
    "Outcome",
    "add_job",
    "add_jobs",
    "batch_ref",
    "migrate",
    "parse_duration",
    "quick_add_job",
]
