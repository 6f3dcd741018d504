"""Document upload and download through the dossier service (client-streaming upload,
server-streaming download, encryption, S3 through minio) versus the raw minio SDK
put/get of the same bytes to the same S3 server (moto, started here), in the same run.

The service runs in its own process (fresh for each size) so its peak memory (VmHWM) is
its own: it must stay flat as the file grows. The file is a DICOM object (header parsed
by pydicom, pixel data streamed). The malware scan is replaced by a pass-through scanner
that reads every byte and says "clean" (clamd's own speed is not what is measured here).

`SO_BENCH_DOSSIER_SIZES_MIB=100,1024` (default) picks the sizes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer

from bench.common import LatencyStats, write_results

MIB = 1024 * 1024
CHUNK = MIB
BUCKET = "bench-dossier"


def _dicom_file(path: Path, size: int) -> None:
    """A valid DICOM header then `size` bytes of pixel data, written without holding it."""
    import io

    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("bench.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    header = io.BytesIO()
    pydicom.dcmwrite(header, dataset, enforce_file_format=True)
    head = header.getvalue()
    pixel_length = size - len(head) - 12
    with path.open("wb") as handle:
        handle.write(head)
        handle.write(struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", pixel_length))
        block = os.urandom(MIB)
        written = 0
        while written < pixel_length:
            part = block[: min(MIB, pixel_length - written)]
            handle.write(part)
            written += len(part)


class PassThroughScanner:
    async def scan(self, chunks: AsyncIterator[bytes]) -> Any:
        from services.dossier.domain.scan import ScanVerdict

        async for _ in chunks:
            pass
        return ScanVerdict(clean=True)


def _serve(workdir: str, endpoint: str, conn: Connection) -> None:
    """Child process: the dossier service on port 0 (SQLite, S3 store), until told to stop."""
    from services.dossier.app import running
    from services.dossier.settings import DossierSettings
    from services.shared.db import upgrade_to_head
    from services.shared.migrate import migrations_dir
    from services.shared.settings import Environment
    from tests.support.stack import make_keys

    base = Path(workdir)
    url = f"sqlite+aiosqlite:///{base / 'dossier.db'}"
    upgrade_to_head(url, migrations_dir("dossier"))
    settings = DossierSettings(
        database_url=url,
        environment=Environment.TEST,
        port=0,
        max_document_bytes=4 * 1024 * MIB,
        scratch_dir=base / "scratch",
        master_keys_dir=base / "master",
        s3_endpoint=endpoint,
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_bucket=BUCKET,
        s3_secure=False,
        s3_region="eu-west-3",
        rescan_interval_seconds=0,
    )

    async def main() -> None:
        async with running(settings, make_keys(base / "keys"), scanner=PassThroughScanner()) as server:
            conn.send(server.target)
            await asyncio.to_thread(conn.recv)

    asyncio.run(main())


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _raw_minio(endpoint: str, path: Path) -> tuple[float, float]:
    from minio import Minio

    client = Minio(endpoint, access_key="testing", secret_key="testing", secure=False, region="eu-west-3")
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    size = path.stat().st_size
    started = time.perf_counter()
    with path.open("rb") as handle:
        client.put_object(BUCKET, "raw/object", handle, length=size, part_size=8 * MIB)
    put_seconds = time.perf_counter() - started
    started = time.perf_counter()
    response = client.get_object(BUCKET, "raw/object")
    try:
        for _ in response.stream(256 * 1024):
            pass
    finally:
        response.close()
        response.release_conn()
    get_seconds = time.perf_counter() - started
    client.remove_object(BUCKET, "raw/object")
    return put_seconds, get_seconds


async def _through_service(target: str, keys_dir: Path, path: Path) -> tuple[float, float]:
    from secondopinion.dossier.v1 import dossier_pb2 as pb
    from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc

    from services.shared.auth import Role, TokenSigner
    from services.shared.grpc_client import open_channel

    signer = TokenSigner.from_keys_dir(keys_dir, "identity", ttl_seconds=3600)
    token, _ = signer.mint("bench-patient", Role.PATIENT, "bench")
    size = await asyncio.to_thread(os.path.getsize, path)
    async with open_channel(target, lambda: token, default_timeout=3600) as channel:
        stub = pb_grpc.DossierServiceStub(channel)
        case = await stub.CreateCase(
            pb.CreateCaseRequest(
                idempotency_key=f"bench-{size}",
                filing_capacity=pb.FILING_CAPACITY_SELF,
                therapeutic_area="oncology",
                purpose=pb.CASE_PURPOSE_SECOND_OPINION,
                doctor_choice_mode=pb.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
            )
        )

        def messages() -> Iterator[pb.UploadDocumentRequest]:
            yield pb.UploadDocumentRequest(
                idempotency_key=f"bench-upload-{size}",
                metadata=pb.UploadDocumentMetadata(
                    case_id=case.case.case_id,
                    purpose=pb.DOCUMENT_PURPOSE_MEDICAL_RECORD,
                    file_name="scan.dcm",
                    declared_size_bytes=size,
                ),
            )
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield pb.UploadDocumentRequest(chunk=chunk)

        started = time.perf_counter()
        document = (await stub.UploadDocument(messages())).document
        upload_seconds = time.perf_counter() - started
        assert document.status == pb.DOCUMENT_STATUS_AVAILABLE, document.status
        started = time.perf_counter()
        received = 0
        async for message in stub.DownloadDocument(
            pb.DownloadDocumentRequest(document_id=document.document_id)
        ):
            received += len(message.chunk)
        download_seconds = time.perf_counter() - started
        assert received == size
    return upload_seconds, download_seconds


def _row(name: str, seconds: float) -> LatencyStats:
    ms = round(seconds * 1000, 1)
    return LatencyStats(name=name, samples=1, p50_ms=ms, p99_ms=ms, mean_ms=ms)


async def run() -> list[LatencyStats]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    sizes = [int(s) for s in os.environ.get("SO_BENCH_DOSSIER_SIZES_MIB", "100,1024").split(",")]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"{host}:{port}"
    rows: list[LatencyStats] = []
    extra: dict[str, Any] = {"sizes_mib": sizes, "scanner": "pass-through", "runs": []}
    context = multiprocessing.get_context("spawn")
    try:
        for size_mib in sizes:
            with tempfile.TemporaryDirectory() as workdir:
                path = Path(workdir) / "bench.dcm"
                await asyncio.to_thread(_dicom_file, path, size_mib * MIB)
                size = path.stat().st_size
                put_s, get_s = await asyncio.to_thread(_raw_minio, endpoint, path)
                parent, child = context.Pipe()
                process = context.Process(target=_serve, args=(workdir, endpoint, child), daemon=True)
                process.start()
                try:
                    target = await asyncio.to_thread(parent.recv)
                    up_s, down_s = await _through_service(target, Path(workdir) / "keys", path)
                    assert process.pid is not None
                    peak = _peak_rss_mib(process.pid)
                finally:
                    parent.send("stop")
                    await asyncio.to_thread(process.join, 30)
                    if process.is_alive():
                        process.kill()
                mb = size / 1e6
                run_result = {
                    "size_mib": size_mib,
                    "raw_put_mb_s": round(mb / put_s, 1),
                    "raw_get_mb_s": round(mb / get_s, 1),
                    "service_upload_mb_s": round(mb / up_s, 1),
                    "service_download_mb_s": round(mb / down_s, 1),
                    "upload_ratio": round(put_s / up_s, 2),
                    "download_ratio": round(get_s / down_s, 2),
                    "service_peak_rss_mib": round(peak, 1),
                }
                extra["runs"].append(run_result)
                rows += [
                    _row(f"{size_mib} MiB raw minio put (baseline)", put_s),
                    _row(f"{size_mib} MiB UploadDocument through the service", up_s),
                    _row(f"{size_mib} MiB raw minio get (baseline)", get_s),
                    _row(f"{size_mib} MiB DownloadDocument through the service", down_s),
                ]
                print(run_result, flush=True)
    finally:
        moto.stop()
    path = write_results("dossier_transfer", rows, extra)
    header = (
        f"{'size':>8} {'raw put':>9} {'upload':>9} {'ratio':>6} "
        f"{'raw get':>9} {'download':>9} {'ratio':>6} {'peak RSS':>9}"
    )
    print(header)
    for r in extra["runs"]:
        print(
            f"{r['size_mib']:>5}MiB {r['raw_put_mb_s']:>6}MB/s {r['service_upload_mb_s']:>6}MB/s "
            f"{r['upload_ratio']:>6} {r['raw_get_mb_s']:>6}MB/s {r['service_download_mb_s']:>6}MB/s "
            f"{r['download_ratio']:>6} {r['service_peak_rss_mib']:>6}MiB"
        )
    print(f"({path})")
    return rows


if __name__ == "__main__":
    asyncio.run(run())
