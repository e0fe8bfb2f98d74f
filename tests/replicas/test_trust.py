"""A site's trust clients against the trust replicas (real uvicorn servers; SQL run on an OMOP-shaped SQLite
database; real DICOM files copied by the imaging replica): FLIP's routes, bodies, parameters and key header."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from flip import FLIP
from flip.constants import ResourceType
from flip.errors import SettingsError, TrustServiceError
from flip.platform.site import site_context
from tests.replicas.fixtures import COHORT_QUERY, HUB_KEY, running_trust, trust  # noqa: F401 - fixtures

pytestmark = pytest.mark.http


def test_get_dataframe_runs_the_query_at_the_data_access_service(trust):
    frame = trust.client().get_dataframe(trust.encrypted_project_id, COHORT_QUERY)
    assert list(frame.columns) == ["accession_id", "label"] and len(frame) == len(trust.cohort)
    assert list(zip(frame["accession_id"], frame["label"])) == sorted(trust.cohort)
    assert all(isinstance(a, str) for a in frame["accession_id"])
    (received,) = trust.data.received
    assert (received["method"], received["path"]) == ("POST", "/cohort/dataframe")
    assert json.loads(received["body"]) == {"encrypted_project_id": trust.encrypted_project_id, "query": COHORT_QUERY}
    assert received["headers"]["x-trust-internal-service-key"] == trust.key


def test_get_by_accession_number_copies_the_dicom_files_into_the_images_folder(trust):
    accession, label = trust.cohort[3]
    folder = trust.client().download_images(trust.encrypted_project_id, accession, [ResourceType.DICOM])
    assert folder == (trust.images / "net-1" / trust.project_id / accession).resolve()
    (dicom,) = folder.rglob("*.dcm")
    from sklearn.datasets import load_digits

    assert np.array_equal(pydicom.dcmread(dicom).pixel_array, load_digits().images[3].astype(np.uint16))
    (received,) = trust.imaging.received
    assert (received["method"], received["path"]) == ("POST", "/download/images/net-1")
    assert received["query"] == "assessor_type=scan&resource_type=DICOM"
    assert json.loads(received["body"]) == {
        "encrypted_central_hub_project_id": trust.encrypted_project_id,
        "accession_id": accession,
    }


def test_each_resource_type_is_asked_for_with_flips_parameters(trust):
    accession = trust.cohort[0][0]
    for resource in ("SEG", "NIFTI"):  # the replica has these too
        (trust.imaging.store / trust.project_id / accession / resource).mkdir()
        (trust.imaging.store / trust.project_id / accession / resource / f"x.{resource.lower()}").write_bytes(b"x")
    trust.client().download_images(
        trust.encrypted_project_id, accession, [ResourceType.DICOM, ResourceType.SEGMENTATION, ResourceType.NIFTI]
    )
    assert [r["query"] for r in trust.imaging.received] == [
        "assessor_type=scan&resource_type=DICOM",
        "assessor_type=assessor&resource_type=SEG",
        "assessor_type=scan&resource_type=NIFTI",
    ]


def test_add_resource_uploads_files_of_the_upload_folder(trust):
    upload = trust.images / "net-1" / "upload"
    upload.mkdir(parents=True)
    (upload / "seg.nii.gz").write_bytes(b"segmentation")
    accession = trust.cohort[0][0]
    trust.client().add_resource(trust.encrypted_project_id, accession, "1", "SEG", ["seg.nii.gz"])
    assert (
        trust.imaging.store / trust.project_id / accession / "uploads" / "1" / "SEG" / "seg.nii.gz"
    ).read_bytes() == b"segmentation"
    assert json.loads(trust.imaging.received[-1]["body"])["files"] == ["seg.nii.gz"]


def test_a_refused_query_is_named_and_nothing_is_written(trust):
    for query, meaning in (
        ("DELETE FROM omop.person", "the query was refused"),
        ("SELECT 1; DROP TABLE omop.person", "the query was refused"),
        ("SELECT accession_id FROM omop.image_occurrence LIMIT 3", "the trust releases no row-level data"),
    ):
        with pytest.raises(
            TrustServiceError,
            match=rf"data-access service rejected POST /cohort/dataframe \(HTTP "
            rf"40[03]: {meaning}",
        ):
            trust.client().get_dataframe(trust.encrypted_project_id, query)
    assert len(trust.client().get_dataframe(trust.encrypted_project_id, COHORT_QUERY)) == len(trust.cohort)


def test_the_prod_platform_gives_each_simulated_site_its_own_trust(tmp_path, monkeypatch):
    with running_trust(tmp_path / "a", "A") as a, running_trust(tmp_path / "b", "B", start=100) as b:
        monkeypatch.setenv("FLIP_ENV", "prod")
        monkeypatch.setenv("FLIP_SITE_ENV", json.dumps({"site-1": a.site_env(), "site-2": b.site_env()}))
        for site, own in (("site-1", a), ("site-2", b)):
            with site_context(site):
                flip = FLIP()
                frame = flip.get_dataframe(own.encrypted_project_id, COHORT_QUERY)
                assert sorted(frame["accession_id"]) == sorted(acc for acc, _ in own.cohort)
                folder = flip.get_by_accession_number(
                    own.encrypted_project_id, frame["accession_id"][0], ResourceType.DICOM
                )
                assert folder.is_relative_to(own.images.resolve())
                assert flip.site_images_dir(site, "job-1") == own.images.resolve() / "net-1"
        assert len(a.data.received) == len(b.data.received) == 1
        flip = FLIP()
        with pytest.raises(
            SettingsError,
            match="FLIP_SITE_ENV gives simulated sites their own trust variables, but "
            "the site this process serves is not known",
        ):
            flip.get_dataframe(a.encrypted_project_id, COHORT_QUERY)
        for received in a.data.received + a.imaging.received + b.data.received + b.imaging.received:
            assert HUB_KEY not in json.dumps({k: v for k, v in received.items() if k != "body"})
            assert HUB_KEY.encode() not in received["body"]
