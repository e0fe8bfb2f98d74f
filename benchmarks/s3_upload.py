"""Upload a 512 MiB model file to the same SeaweedFS (weed mini) server, side by side in one run:

- ours: flip.storage.upload.upload_run (sha256 + S3 SHA-256 checksums, manifest, verification included);
- boto3 put_object (one request) and boto3 upload_file (default managed transfer): the faster is the baseline;
- zip-then-upload: zip the run folder, upload the zip with upload_file (the common practice we replace).

Each is timed min of ``--repeats`` (fresh keys every time). Last line:
``s3_upload bytes=536870912 ratio_vs_boto3=<our throughput / boto3 throughput>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flip.storage.client import DEFAULT_TRANSFER, make_s3_client
from flip.storage.layout import run_prefix
from flip.storage.manifest import verify_run
from flip.storage.upload import upload_run  # noqa: E402
from flip.storage.weed import WeedS3  # noqa: E402

SIZE = 512 * 1024 * 1024
MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"


def _best(repeats, action) -> float:
    best = float("inf")
    for i in range(repeats):
        started = time.perf_counter()
        action(i)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, WeedS3(root=Path(tmp) / "weed") as server:
        os.environ.update(server.env)
        client = make_s3_client()
        folder = Path(tmp) / "run"
        folder.mkdir()
        model = folder / "global_model.pt"
        with open(model, "wb") as f:
            for _ in range(args.size // (1 << 24)):
                f.write(os.urandom(1 << 24))
            f.write(os.urandom(args.size % (1 << 24)))
        (folder / "metrics.json").write_text("{}")
        bucket = server.bucket

        def ours(i):
            prefix = run_prefix(MODEL_ID, f"ours-{i}")
            upload_run(client, bucket, prefix, {"global_model.pt": model}, {"job_id": f"ours-{i}"})
            verify_run(client, bucket, prefix)

        def put_object(i):
            with open(model, "rb") as body:
                client.put_object(Bucket=bucket, Key=f"raw/put-{i}", Body=body)

        def upload_file(i):
            client.upload_file(str(model), bucket, f"raw/file-{i}")

        def zip_then_upload(i):
            archive = Path(tmp) / f"run-{i}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
                for path in folder.iterdir():
                    z.write(path, path.name)
            client.upload_file(str(archive), bucket, f"zip/run-{i}.zip")
            archive.unlink()

        results = {}
        for name, action in (
            ("put_object", put_object),
            ("upload_file", upload_file),
            ("ours", ours),
            ("zip_then_upload", zip_then_upload),
        ):
            results[name] = _best(args.repeats, action)
            print(f"{name:>16}: {results[name]:6.2f} s  {args.size / results[name] / 2**20:7.1f} MiB/s", flush=True)
        baseline = min(results["put_object"], results["upload_file"])
        print(
            f"part size {DEFAULT_TRANSFER.multipart_chunksize // 2**20} MiB, "
            f"threshold {DEFAULT_TRANSFER.multipart_threshold // 2**20} MiB, "
            f"concurrency {DEFAULT_TRANSFER.max_concurrency}"
        )
        print(f"s3_upload bytes={args.size} ratio_vs_boto3={baseline / results['ours']:.3f}")


if __name__ == "__main__":
    main()
