"""AWS errors as HealthImaging returns them: one class per error code, HTTP status from the model.

EmulatorError
├── ValidationException            400
├── BadRequestException            400
├── AccessDeniedException          403
├── ResourceNotFoundException      404
├── NotAcceptableException         406
├── ConflictException              409
├── ServiceQuotaExceededException  402
├── ThrottlingException            429
└── InternalServerException        500
"""

from __future__ import annotations

from typing import ClassVar

from emulator.spec import error_status


class EmulatorError(Exception):
    """An error answered as `x-amzn-ErrorType: <code>` with `{"message": ...}`."""

    code: ClassVar[str] = "InternalServerException"
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.code = cls.__name__
        cls.status = error_status(cls.__name__)


class ValidationException(EmulatorError):
    pass


class BadRequestException(EmulatorError):
    pass


class AccessDeniedException(EmulatorError):
    pass


class ResourceNotFoundException(EmulatorError):
    pass


class NotAcceptableException(EmulatorError):
    pass


class ConflictException(EmulatorError):
    pass


class ServiceQuotaExceededException(EmulatorError):
    pass


class ThrottlingException(EmulatorError):
    pass


class InternalServerException(EmulatorError):
    pass
