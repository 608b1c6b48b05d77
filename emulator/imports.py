"""DICOM import jobs: the `inputS3Uri` is read from a local folder configured for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from emulator import pagination
from emulator.dicom_import import ImportProblem, build_document, group_by_study, read_instances
from emulator.exceptions import ResourceNotFoundException
from emulator.models import Backend
from emulator.resources import ImportJob, JobStatus, new_id
from emulator.state import Job


@dataclass(frozen=True)
class ImportRequest:
    """A StartDICOMImportJob request, as the backend receives it."""

    job_name: str
    data_access_role_arn: str
    client_token: str
    input_s3_uri: str
    output_s3_uri: str


def start_import(backend: Backend, datastore_id: str, request: ImportRequest) -> ImportJob:
    now = backend.tick()
    datastore = backend.active_datastore(datastore_id)
    for existing in datastore.import_jobs.values():
        if existing.client_token == request.client_token:
            return existing  # the client token makes retries idempotent
    job = ImportJob(
        new_id(),
        request.job_name,
        datastore_id,
        JobStatus.SUBMITTED,
        request.data_access_role_arn,
        request.input_s3_uri,
        request.output_s3_uri,
        now,
        request.client_token,
    )
    datastore.import_jobs[job.job_id] = job

    def finish(at: float) -> None:
        _run(backend, job, at)

    backend.jobs.add(Job((job.job_id,), backend.settings.progressions.import_job, now, finish))
    return job


def local_folder(folders: dict[str, Path], uri: str) -> Path | None:
    """The configured folder for the longest matching S3 prefix, plus the rest of the key."""
    matches = [prefix for prefix in folders if uri.startswith(prefix)]
    if not matches:
        return None
    prefix = max(matches, key=len)
    rest = uri[len(prefix) :].strip("/")
    return folders[prefix] / rest if rest else folders[prefix]


def _run(backend: Backend, job: ImportJob, at: float) -> None:
    job.ended_at = at
    folder = local_folder(dict(backend.settings.import_folders), job.input_s3_uri)
    if folder is None:
        job.status, job.message = (
            JobStatus.FAILED,
            "INVALID_REQUEST: no local folder is mapped to inputS3Uri",
        )
        return
    try:
        studies = group_by_study(read_instances([folder]))
    except ImportProblem:
        job.status, job.message = (
            JobStatus.FAILED,
            "INVALID_REQUEST: no DICOM instances under inputS3Uri",
        )
        return
    for instances in studies.values():
        job.image_set_ids.append(_import_study(backend, job.datastore_id, instances))
    job.status = JobStatus.COMPLETED


def _import_study(backend: Backend, datastore_id: str, instances: Sequence[Dataset]) -> str:
    """Imports are primary unless configured otherwise or the study already has a primary set."""
    document = build_document(instances)
    study_uid = document["Study"]["DICOM"].get("StudyInstanceUID")
    taken = any(
        s.is_primary and s.study_uid == study_uid
        for s in backend.datastore(datastore_id).live_image_sets()
    )
    primary = backend.settings.import_primary and not taken
    return backend.add_image_set(
        datastore_id, document, is_primary=primary, status="IMPORTED"
    ).image_set_id


def get_import_job(backend: Backend, datastore_id: str, job_id: str) -> ImportJob:
    backend.tick()
    job = backend.datastore(datastore_id).import_jobs.get(job_id)
    if job is None:
        raise ResourceNotFoundException("the import job does not exist")
    backend.jobs.observe(job_id)
    if job.status is JobStatus.SUBMITTED:
        job.status = JobStatus.IN_PROGRESS  # once somebody looks, the job is running
    return job


def list_import_jobs(
    backend: Backend,
    datastore_id: str,
    status: str | None,
    max_results: int | None,
    token: str | None,
) -> tuple[list[ImportJob], str | None]:
    backend.tick()
    jobs = [
        j
        for j in backend.datastore(datastore_id).import_jobs.values()
        if status is None or j.status == status
    ]
    jobs.sort(key=lambda j: j.submitted_at, reverse=True)
    return pagination.page(jobs, max_results, token, f"imports/{datastore_id}/{status}")
