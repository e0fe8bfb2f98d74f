"""Storage errors: the one translation of boto errors into ours, and every error of ours derives from FlipError."""

from __future__ import annotations

import inspect
import pkgutil

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError

import flip.errors
import flip.storage
from flip.errors import FlipError, RegistryError, StorageError, UploadError, VerificationError
from flip.storage import registry
from flip.storage.client import describe_error, s3_errors

pytestmark = pytest.mark.unit


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "no such thing"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def _upload_failed() -> S3UploadFailedError:
    try:
        try:
            raise _client_error("SlowDown", 503)
        except ClientError as exc:
            raise S3UploadFailedError("Failed to upload") from exc
    except S3UploadFailedError as exc:
        return exc


@pytest.mark.parametrize(
    ("raised", "cause"),
    [
        (_client_error("NoSuchBucket", 404), "NoSuchBucket (HTTP 404)"),
        (_client_error("AccessDenied", 403), "AccessDenied (HTTP 403): access denied, check the S3 credentials"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "EndpointConnectionError"),
        (_upload_failed(), "SlowDown (HTTP 503)"),
    ],
)
@pytest.mark.parametrize("error", [StorageError, UploadError, VerificationError])
def test_s3_errors_turns_a_boto_error_into_ours_with_a_short_cause(raised, cause, error):
    with pytest.raises(error) as caught, s3_errors("cannot read b/k", error):
        raise raised
    assert type(caught.value) is error
    assert str(caught.value) == f"cannot read b/k: {cause}"
    assert caught.value.__cause__ is raised
    assert describe_error(raised) == cause


def test_s3_errors_translates_also_and_passes_everything_else_through():
    with (
        pytest.raises(UploadError, match=r"\Aupload to b/k failed: FileNotFoundError\Z"),
        s3_errors("upload to b/k failed", UploadError, also=(OSError,)),
    ):
        raise FileNotFoundError(2, "No such file", "/data/patient-1/model.pt")
    with pytest.raises(FileNotFoundError), s3_errors("upload to b/k failed", UploadError):
        raise FileNotFoundError(2, "No such file")
    with pytest.raises(RegistryError, match="no objects"), s3_errors("cannot remove model m"):
        raise RegistryError("model m has no objects")


def test_every_error_of_ours_derives_from_flip_error():
    ours = [c for _, c in inspect.getmembers(flip.errors, inspect.isclass) if issubclass(c, BaseException)]
    assert RegistryError in ours and registry.RegistryError is RegistryError
    assert all(issubclass(c, FlipError) for c in ours), [c for c in ours if not issubclass(c, FlipError)]
    for info in pkgutil.iter_modules(flip.storage.__path__):
        module = __import__(f"flip.storage.{info.name}", fromlist=["_"])
        defined = [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__ and issubclass(c, BaseException)
        ]
        assert defined == [], f"flip.storage.{info.name} defines {defined}: errors of ours live in flip/errors.py"
