"""hopper: a PostgreSQL job queue whose behaviour lives in versioned SQL."""

# so that hopper.aio works after a bare "import hopper"
from hopper import aio
from hopper._admin import cancel_jobs, job_status, retry_jobs
from hopper._crontab import CrontabError, CrontabItem, parse_crontab, sync_crontab
from hopper._migrate import MigrationError, migrate
from hopper._options import JobSpec, batch_ref, parse_duration
from hopper._producer import add_job, add_jobs, quick_add_job
from hopper._records import Job, JobState, Outcome
from hopper._tasks import JobContext, JobLost, PermanentFailure, TaskRegistry
from hopper._worker import Worker, run_once, run_worker

__all__ = [
    "CrontabError",
    "CrontabItem",
    "Job",
    "JobContext",
    "JobLost",
    "JobSpec",
    "JobState",
    "MigrationError",
    "Outcome",
    "PermanentFailure",
    "TaskRegistry",
    "Worker",
    "add_job",
    "add_jobs",
    "aio",
    "batch_ref",
    "cancel_jobs",
    "job_status",
    "migrate",
    "parse_crontab",
    "parse_duration",
    "quick_add_job",
    "retry_jobs",
    "run_once",
    "run_worker",
    "sync_crontab",
]


def __getattr__(name: str) -> str:
    # looked up on first use: reading the installed metadata costs every import
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pghopper")
        except PackageNotFoundError:  # run from a source tree that is not installed
            return "unknown"
    raise AttributeError(f"module 'hopper' has no attribute {name!r}")
