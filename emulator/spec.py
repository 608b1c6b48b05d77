"""botocore's `medical-imaging` service model: the one source of routes, shapes and error codes."""

from __future__ import annotations

from functools import cache

from botocore.loaders import Loader
from botocore.model import OperationModel, ServiceModel

from medical_imaging_model import DATA_PATH

SERVICE_NAME = "medical-imaging"


@cache
def service_model() -> ServiceModel:
    """The vendored model first (it knows includeStudyImageSets), then botocore's own."""
    loader = Loader(extra_search_paths=[str(DATA_PATH)])
    return ServiceModel(loader.load_service_model(SERVICE_NAME, "service-2"), SERVICE_NAME)


def operation(name: str) -> OperationModel:
    return service_model().operation_model(name)


def error_status(code: str) -> int:
    """HTTP status the model gives an error shape."""
    status: int = service_model().shape_for(code).metadata["error"]["httpStatusCode"]
    return status
